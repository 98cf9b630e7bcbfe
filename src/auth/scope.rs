//! What a credential allows: a set of actions on a set of streams, or everything (admin).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Something a caller may do to a stream.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Watch live video: `/ws/live`, HLS.
    Live,
    /// Play and list the archive: `/ws/archive`, ranges, segments, protected ranges (read).
    Archive,
    /// Download MP4 exports.
    Export,
    /// Change the stream (PUT, PATCH, DELETE, enable/disable, protected ranges) and see its
    /// source URL.
    Manage,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Live,
        Action::Archive,
        Action::Export,
        Action::Manage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Live => "live",
            Action::Archive => "archive",
            Action::Export => "export",
            Action::Manage => "manage",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);

    pub fn all() -> Actions {
        Action::ALL.into_iter().collect()
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Every action of `self` is in `other`.
    pub fn is_subset_of(self, other: Actions) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// Comma-separated, in the canonical order (`live,archive,export,manage`): the stored form,
    /// and what a signature covers.
    pub fn to_list(self) -> String {
        self.iter()
            .map(Action::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses a comma-separated list; `Err` names the first unknown action. Empty items are
    /// skipped, duplicates are harmless.
    pub fn parse_list(s: &str) -> Result<Actions, String> {
        let mut set = Actions::NONE;
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let a = Action::parse(item).ok_or_else(|| item.to_owned())?;
            set.0 |= a.bit();
        }
        Ok(set)
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        Actions(iter.into_iter().fold(0, |acc, a| acc | a.bit()))
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actions({})", self.to_list())
    }
}

/// The streams a credential covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Streams {
    /// Every stream, present and future (`*`).
    All,
    /// These streams only.
    Only(BTreeSet<Uuid>),
}

impl Streams {
    pub fn contains(&self, id: Uuid) -> bool {
        match self {
            Streams::All => true,
            Streams::Only(ids) => ids.contains(&id),
        }
    }

    /// `*` or comma-separated ids: the stored form.
    pub fn to_list(&self) -> String {
        match self {
            Streams::All => "*".to_owned(),
            Streams::Only(ids) => ids
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// Parses `*` or comma-separated UUIDs; `Err` names the first item that is neither. A `*`
    /// anywhere means every stream.
    pub fn parse_list(s: &str) -> Result<Streams, String> {
        let mut ids = BTreeSet::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                return Ok(Streams::All);
            }
            ids.insert(Uuid::parse_str(item).map_err(|_| item.to_owned())?);
        }
        Ok(Streams::Only(ids))
    }

    /// The items as strings (`["*"]` or the ids), for JSON answers.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Streams::All => vec!["*".to_owned()],
            Streams::Only(ids) => ids.iter().map(Uuid::to_string).collect(),
        }
    }
}

/// What one credential may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Everything, including tokens and the audit log.
    pub admin: bool,
    pub streams: Streams,
    pub actions: Actions,
}

impl Grant {
    /// Everything.
    pub fn admin() -> Grant {
        Grant {
            admin: true,
            streams: Streams::All,
            actions: Actions::all(),
        }
    }

    /// Nothing at all.
    pub fn nothing() -> Grant {
        Grant {
            admin: false,
            streams: Streams::Only(BTreeSet::new()),
            actions: Actions::NONE,
        }
    }

    /// `action` on stream `id`.
    pub fn allows(&self, action: Action, id: Uuid) -> bool {
        self.admin || (self.actions.contains(action) && self.streams.contains(id))
    }

    /// `action` on every stream, including streams that do not exist yet (creating one).
    pub fn allows_everywhere(&self, action: Action) -> bool {
        self.admin || (self.actions.contains(action) && self.streams == Streams::All)
    }

    /// Any action on stream `id`: the stream is in scope, so listings show it.
    pub fn sees(&self, id: Uuid) -> bool {
        self.admin || (!self.actions.is_empty() && self.streams.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_reject_unknown_items() {
        let a = Actions::parse_list("manage, live,live").expect("valid");
        assert_eq!(a.to_list(), "live,manage");
        assert_eq!(Actions::parse_list("live,fly"), Err("fly".to_owned()));
        assert!(Actions::parse_list("").expect("empty").is_empty());
        let id = Uuid::new_v4();
        let s = Streams::parse_list(&format!("{id}")).expect("valid");
        assert_eq!(Streams::parse_list(&s.to_list()), Ok(s.clone()));
        assert!(s.contains(id) && !s.contains(Uuid::new_v4()));
        assert_eq!(Streams::parse_list(&format!("{id},*")), Ok(Streams::All));
        assert_eq!(
            Streams::parse_list("nope"),
            Err::<Streams, _>("nope".to_owned())
        );
    }

    #[test]
    fn grants() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let g = Grant {
            admin: false,
            streams: Streams::Only([a].into()),
            actions: Actions::parse_list("live,archive").expect("valid"),
        };
        assert!(g.allows(Action::Live, a));
        assert!(!g.allows(Action::Manage, a));
        assert!(!g.allows(Action::Live, b));
        assert!(g.sees(a) && !g.sees(b));
        assert!(!g.allows_everywhere(Action::Live));
        let all = Grant {
            streams: Streams::All,
            ..g
        };
        assert!(all.allows_everywhere(Action::Live));
        assert!(!all.allows_everywhere(Action::Manage));
        assert!(Grant::admin().allows_everywhere(Action::Manage));
        assert!(!Grant::nothing().sees(a));
        assert!(
            Actions::parse_list("live")
                .expect("valid")
                .is_subset_of(all.actions)
        );
        assert!(!Actions::all().is_subset_of(all.actions));
    }
}
