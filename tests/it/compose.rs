//! docker-compose.yaml cannot run here (no container engine), so check that it agrees with the
//! config it mounts and the Dockerfile: services, ports, environment, credentials, volumes.

use std::path::Path;

use video_server::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn env(service: &Yaml, key: &str) -> String {
    service["environment"][key]
        .as_str()
        .unwrap_or_else(|| panic!("environment {key} missing"))
        .to_owned()
}

#[test]
fn compose_file_agrees_with_its_config() {
    let text = std::fs::read_to_string(root().join("docker-compose.yaml")).expect("compose file");
    let doc = &YamlLoader::load_from_str(&text).expect("valid YAML")[0];
    let services = &doc["services"];
    for name in ["video-server", "postgres", "minio", "minio-init"] {
        assert!(!services[name].is_badvalue(), "service {name} missing");
    }
    let server = &services["video-server"];
    assert!(server["build"].as_str().is_some() || !server["build"].is_badvalue());

    // The config mounted read-only, and named on the command line.
    let volumes = strings(&server["volumes"]);
    let mount = volumes
        .iter()
        .find(|v| v.ends_with(":/app/conf.toml:ro"))
        .expect("config mounted read-only at /app/conf.toml");
    let host_path = mount.trim_end_matches(":/app/conf.toml:ro");
    let command = strings(&server["command"]);
    assert!(
        command
            .windows(2)
            .any(|w| w[0] == "--conf" && w[1] == "/app/conf.toml")
    );
    let conf_path = root().join(host_path.trim_start_matches("./"));
    let config = Config::load(&conf_path).expect("mounted config is valid");

    // Listeners: 0.0.0.0 inside the container, published on the configured ports.
    assert_eq!(config.api.host, "0.0.0.0");
    assert_eq!(config.video.host, "0.0.0.0");
    let ports = strings(&server["ports"]);
    for port in [config.api.port(), config.video.port()] {
        assert!(
            ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
            "port {port} not published: {ports:?}"
        );
    }

    // WebRTC's UDP port is published (as UDP) and advertised with an address.
    let udp = format!("{0}:{0}/udp", config.webrtc.udp_port);
    assert!(ports.contains(&udp), "{udp} not published: {ports:?}");
    assert!(!config.webrtc.advertise.is_empty(), "[webrtc] advertise");

    // Data directories are volumes.
    for dir in [
        config.archive.directory(),
        config.hls.directory.as_str(),
        "/app/data",
    ] {
        assert!(
            volumes.iter().any(|v| v.ends_with(&format!(":{dir}"))),
            "{dir} is not a volume: {volumes:?}"
        );
    }

    // Access control on, with the bootstrap admin token from .env (never committed); the
    // example file's placeholder is refused by the server.
    assert!(config.auth.enabled, "compose enables auth");
    let token = env(server, "VIDEO_SERVER_ADMIN_TOKEN");
    assert!(
        token.starts_with("${VIDEO_SERVER_ADMIN_TOKEN:?"),
        "the token comes from .env and is required: {token}"
    );
    let example = std::fs::read_to_string(root().join(".env.example")).expect(".env.example");
    let placeholder = example
        .lines()
        .find_map(|l| l.strip_prefix("VIDEO_SERVER_ADMIN_TOKEN="))
        .expect("the variable in .env.example");
    assert!(
        placeholder.len() < video_server::auth::token::MIN_BOOTSTRAP_LEN,
        "the placeholder must be unusable"
    );
    let ignored = std::fs::read_to_string(root().join(".gitignore")).expect(".gitignore");
    assert!(
        ignored.lines().any(|l| l.trim() == ".env"),
        ".env is not committed"
    );

    // Database: the env override equals the file, and matches the postgres service.
    let db_url = env(server, "VIDEO_SERVER_DATABASE_URL");
    assert_eq!(db_url, config.database.url);
    let u = url::Url::parse(&db_url).expect("db url");
    let pg = &services["postgres"];
    assert_eq!(u.host_str(), Some("postgres"));
    assert_eq!(u.username(), env(pg, "POSTGRES_USER"));
    assert_eq!(u.password(), Some(env(pg, "POSTGRES_PASSWORD").as_str()));
    assert_eq!(u.path().trim_start_matches('/'), env(pg, "POSTGRES_DB"));
    assert!(
        strings(&server["depends_on"]).is_empty(),
        "depends_on uses the long form"
    );
    assert!(!server["depends_on"]["postgres"].is_badvalue());

    // Object store: endpoint is the minio service, credentials and bucket agree.
    let s3 = config.effective_s3().expect("s3 configured");
    let e = url::Url::parse(&s3.endpoint).expect("endpoint");
    assert_eq!(e.host_str(), Some("minio"));
    let minio = &services["minio"];
    let port = e.port_or_known_default().expect("port");
    assert!(
        strings(&minio["ports"])
            .iter()
            .any(|p| p.ends_with(&format!(":{port}")))
    );
    assert_eq!(s3.access_key, env(minio, "MINIO_ROOT_USER"));
    assert_eq!(s3.secret_key, env(minio, "MINIO_ROOT_PASSWORD"));
    let init = &services["minio-init"];
    let init_cmd = strings(&init["command"]).join(" ");
    assert!(
        init_cmd.contains(&format!("local/{}", s3.bucket)),
        "bucket {} not created",
        s3.bucket
    );
    assert!(!init_cmd.contains("ilm"), "no hidden lifecycle rules");
    // The Go minio_settings agree with [s3] too.
    let m = &config.archive.minio_settings;
    assert_eq!(
        (m.user.as_str(), m.password.as_str()),
        (s3.access_key.as_str(), s3.secret_key.as_str())
    );
    assert_eq!(m.default_bucket, s3.bucket);

    // The named volumes exist.
    for v in volumes
        .iter()
        .filter(|v| !v.starts_with('.') && !v.starts_with('/'))
    {
        let name = v.split(':').next().expect("name");
        assert!(
            !doc["volumes"][name].is_badvalue(),
            "volume {name} not declared"
        );
    }

    // The Dockerfile exposes the same ports.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    let expose = dockerfile
        .lines()
        .find(|l| l.trim_start().starts_with("EXPOSE"))
        .expect("EXPOSE line");
    for port in [config.api.port(), config.video.port()] {
        assert!(expose.contains(&port.to_string()), "{expose}");
    }
    assert!(
        expose.contains(&format!("{}/udp", config.webrtc.udp_port)),
        "{expose}"
    );
}

/// The `cluster` profile: three nodes on one shared config, each with its own id, address, ports
/// and archive volume, on a database and a bucket the single server does not use.
#[test]
fn cluster_profile_agrees_with_its_config() {
    let text = std::fs::read_to_string(root().join("docker-compose.yaml")).expect("compose file");
    let doc = &YamlLoader::load_from_str(&text).expect("valid YAML")[0];
    let services = &doc["services"];
    let conf = std::fs::read_to_string(root().join("deploy/conf.cluster.toml")).expect("config");
    // The address comes from each node's environment; give the check one.
    let with_address = conf.replace(
        "[cluster]\nenabled = true\n",
        "[cluster]\nenabled = true\nadvertise_host = \"node1\"\n",
    );
    assert_ne!(
        with_address, conf,
        "[cluster] enabled = true is in the file"
    );
    let config =
        Config::from_toml_str("deploy/conf.cluster.toml", &with_address).expect("valid config");
    assert!(config.cluster.enabled);
    assert!(
        config.cluster.node_id.is_empty(),
        "ids come from the environment"
    );
    let single = Config::load(&root().join("deploy/conf.compose.toml")).expect("single config");
    let u = url::Url::parse(&config.database.url).expect("db url");
    assert_eq!(u.host_str(), Some("postgres"));
    let db = u.path().trim_start_matches('/').to_owned();
    assert_ne!(
        db,
        url::Url::parse(&single.database.url)
            .expect("url")
            .path()
            .trim_start_matches('/'),
        "a database of its own"
    );
    let create = strings(&services["cluster-db"]["command"]).join(" ");
    assert!(
        create.contains(&format!("CREATE DATABASE {db}")),
        "{create}"
    );
    let s3 = config.effective_s3().expect("s3");
    assert_ne!(
        Some(s3.bucket.clone()),
        single.effective_s3().map(|s| s.bucket)
    );
    let init_cmd = strings(&services["minio-init"]["command"]).join(" ");
    assert!(init_cmd.contains(&format!("local/{}", s3.bucket)));

    let mut host_ports = Vec::new();
    let mut archives = Vec::new();
    for name in ["node1", "node2", "node3"] {
        let node = &services[name];
        assert!(!node.is_badvalue(), "service {name} missing");
        assert_eq!(strings(&node["profiles"]), vec!["cluster".to_owned()]);
        assert_eq!(env(node, "VIDEO_SERVER_NODE_ID"), name);
        assert_eq!(env(node, "VIDEO_SERVER_ADVERTISE_HOST"), name);
        assert!(env(node, "VIDEO_SERVER_ADMIN_TOKEN").starts_with("${VIDEO_SERVER_ADMIN_TOKEN:?"));
        let volumes = strings(&node["volumes"]);
        assert!(volumes.contains(&"./deploy/conf.cluster.toml:/app/conf.toml:ro".to_owned()));
        let archive = volumes
            .iter()
            .find(|v| v.ends_with(&format!(":{}", config.archive.directory())))
            .unwrap_or_else(|| panic!("{name}: the archive directory is not a volume"));
        archives.push(archive.clone());
        let ports = strings(&node["ports"]);
        for port in [config.api.port(), config.video.port()] {
            let p = ports
                .iter()
                .find(|p| p.ends_with(&format!(":{port}")))
                .unwrap_or_else(|| panic!("{name}: port {port} not published"));
            host_ports.push(p.clone());
        }
        assert!(!node["depends_on"]["cluster-db"].is_badvalue());
    }
    archives.sort();
    archives.dedup();
    assert_eq!(
        archives.len(),
        3,
        "each node has an archive volume of its own"
    );
    let n = host_ports.len();
    host_ports.sort();
    host_ports.dedup();
    assert_eq!(host_ports.len(), n, "host ports are distinct");
}
