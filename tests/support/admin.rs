//! Servers run with auth on: a bootstrap admin token file with its `[auth]` section, and the two
//! ways the limit and security tests run a server (auth off, or on with every request sent as the
//! admin).

use std::path::Path;
use std::time::Duration;

/// Writes `token` into a bootstrap token file in `dir` (mode 0600, as the server requires) and
/// returns the `[auth]` section that enables auth with it.
pub fn admin_token_section(dir: &Path, token: &str) -> String {
    let file = dir.join("admin.token");
    std::fs::write(&file, format!("{token}\n")).expect("token file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    format!(
        "[auth]\nenabled = true\nadmin_token_file = \"{}\"\n",
        file.display()
    )
}

/// How a test's server runs: auth off (anonymous clients), or on with every request sending the
/// bootstrap admin token (the most trusted caller gets around no limit or defence either).
#[derive(Debug, Clone, Copy)]
pub enum Auth {
    Off,
    /// Auth on; the bootstrap admin token.
    Admin(&'static str),
}

impl Auth {
    /// The `[auth]` section, with the token file written to `dir` (empty when off).
    pub fn section(self, dir: &Path) -> String {
        match self {
            Auth::Off => String::new(),
            Auth::Admin(token) => admin_token_section(dir, token),
        }
    }

    /// The token every request sends, if any.
    pub fn bearer(self) -> Option<&'static str> {
        match self {
            Auth::Off => None,
            Auth::Admin(token) => Some(token),
        }
    }

    /// An HTTP client that sends the admin token when auth is on.
    pub fn http(self) -> reqwest::Client {
        bearer_client(self.bearer())
    }
}

/// An HTTP client that sends `token` as a bearer token on every request (`None`: no header).
pub fn bearer_client(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .expect("client")
}

/// A new token made by `admin` through the API at `api` (`POST /api/v1/tokens`): `actions` on
/// `streams` (ids, or `*`); its secret and its id.
pub async fn create_token(
    api: &str,
    admin: &str,
    name: &str,
    streams: &[&str],
    actions: &[&str],
) -> (String, String) {
    let r = bearer_client(Some(admin))
        .post(format!("{api}/api/v1/tokens"))
        .json(&serde_json::json!({"name": name, "streams": streams, "actions": actions}))
        .send()
        .await
        .expect("create token");
    assert_eq!(r.status().as_u16(), 201, "create token");
    let v: serde_json::Value = r.json().await.expect("json");
    let field = |k: &str| v[k].as_str().expect("token field").to_owned();
    (field("token"), field("id"))
}
