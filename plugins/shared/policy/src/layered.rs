//! The merge rule of team and local policies: a local policy can only tighten the team's.
//!
//! Policies are not merged as documents. A policy usually says things at several levels (a
//! default, then per server, per tool...), and merging the two documents level by level would
//! let a local per-server entry override the team's default: looser than the team, by a side
//! door. So each *decision* is made in each layer on its own, with that layer's own overrides,
//! and the two answers are combined: the stricter one wins. [`Layered::decide`] does this for
//! an ordered setting (greater is stricter: `warn < block`, or `Reverse(limit)` for a maximum),
//! [`Layered::deny`] for lists of what is forbidden (the union), [`Layered::allow`] for lists of
//! what is allowed (the intersection).
//!
//! Where no layer says anything, the caller's built-in default applies. The team may set a
//! setting looser than the built-in default (the team's admins decide for the team); a local
//! policy may not set one looser than the team's, and such a setting is reported back
//! ([`Decided::overruled`]) so that the plugin can tell the user why it was not applied.

use std::collections::BTreeSet;

/// Which layer a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Neither policy said anything: the plugin's built-in default.
    Default,
    /// The verified team policy.
    Team,
    /// The local policy (`KM_HOME/policies/NAME.toml`).
    Local,
}

impl Layer {
    /// `default`, `team` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Default => "default",
            Layer::Team => "team",
            Layer::Local => "local",
        }
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided<T> {
    /// The value in force.
    pub value: T,
    /// Where it came from (for two equal answers: the team).
    pub from: Layer,
    /// A local setting looser than the team's, which was therefore not applied.
    pub overruled: Option<T>,
}

/// A team policy and a local policy of the same shape, either or both absent.
#[derive(Debug, Clone, Copy)]
pub struct Layered<'a, P> {
    /// The verified team policy, if the machine is in a team that has one.
    pub team: Option<&'a P>,
    /// The local policy, if there is one.
    pub local: Option<&'a P>,
}

impl<P> Default for Layered<'_, P> {
    fn default() -> Self {
        Layered {
            team: None,
            local: None,
        }
    }
}

impl<'a, P> Layered<'a, P> {
    /// Both layers.
    pub fn new(team: Option<&'a P>, local: Option<&'a P>) -> Self {
        Layered { team, local }
    }

    /// One ordered decision, greater being stricter. `resolve` answers it within one layer
    /// (applying that layer's own defaults and overrides), `None` when the layer is silent.
    pub fn decide<T: Ord + Clone>(
        &self,
        default: T,
        resolve: impl Fn(&P) -> Option<T>,
    ) -> Decided<T> {
        let team = self.team.and_then(&resolve);
        let local = self.local.and_then(&resolve);
        match (team, local) {
            (Some(team), Some(local)) if local > team => Decided {
                value: local,
                from: Layer::Local,
                overruled: None,
            },
            (Some(team), Some(local)) if local < team => Decided {
                value: team,
                from: Layer::Team,
                overruled: Some(local),
            },
            (Some(team), _) => Decided {
                value: team,
                from: Layer::Team,
                overruled: None,
            },
            (None, Some(local)) => Decided {
                value: local,
                from: Layer::Local,
                overruled: None,
            },
            (None, None) => Decided {
                value: default,
                from: Layer::Default,
                overruled: None,
            },
        }
    }

    /// What is forbidden: everything either layer forbids.
    pub fn deny<T: Ord + Clone>(&self, list: impl Fn(&P) -> Vec<T>) -> BTreeSet<T> {
        self.team
            .into_iter()
            .chain(self.local)
            .flat_map(list)
            .collect()
    }

    /// What is allowed, `None` meaning unrestricted: only what every layer that restricts
    /// allows. A local allow list can narrow the team's, never widen it.
    pub fn allow<T: Ord + Clone>(
        &self,
        list: impl Fn(&P) -> Option<Vec<T>>,
    ) -> Option<BTreeSet<T>> {
        let team: Option<BTreeSet<T>> = self.team.and_then(&list).map(|l| l.into_iter().collect());
        let local: Option<BTreeSet<T>> =
            self.local.and_then(&list).map(|l| l.into_iter().collect());
        match (team, local) {
            (Some(team), Some(local)) => Some(team.intersection(&local).cloned().collect()),
            (team, local) => team.or(local),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::BTreeMap;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Action {
        Allow,
        Warn,
        Block,
    }

    /// A policy with a default and per-server overrides, the usual shape.
    #[derive(Default)]
    struct Policy {
        default: Option<Action>,
        servers: BTreeMap<&'static str, Action>,
        max_bytes: Option<u64>,
        denied: Vec<&'static str>,
        allowed: Option<Vec<&'static str>>,
    }

    impl Policy {
        fn for_server(&self, server: &str) -> Option<Action> {
            self.servers.get(server).copied().or(self.default)
        }
    }

    #[test]
    fn a_local_override_cannot_loosen_the_teams_default() {
        let team = Policy {
            default: Some(Action::Block),
            ..Policy::default()
        };
        let local = Policy {
            servers: [("github", Action::Allow)].into(),
            ..Policy::default()
        };
        let layered = Layered::new(Some(&team), Some(&local));
        let decided = layered.decide(Action::Warn, |p| p.for_server("github"));
        assert_eq!(decided.value, Action::Block);
        assert_eq!(decided.from, Layer::Team);
        assert_eq!(decided.overruled, Some(Action::Allow));
        // Another server: the local policy is silent, the team's default holds.
        let other = layered.decide(Action::Warn, |p| p.for_server("fs"));
        assert_eq!((other.value, other.overruled), (Action::Block, None));
    }

    #[test]
    fn a_local_policy_can_tighten_and_the_team_can_loosen_the_default() {
        let team = Policy {
            default: Some(Action::Allow),
            ..Policy::default()
        };
        let local = Policy {
            servers: [("fs", Action::Block)].into(),
            ..Policy::default()
        };
        let layered = Layered::new(Some(&team), Some(&local));
        let fs = layered.decide(Action::Warn, |p| p.for_server("fs"));
        assert_eq!((fs.value, fs.from), (Action::Block, Layer::Local));
        let other = layered.decide(Action::Warn, |p| p.for_server("x"));
        assert_eq!((other.value, other.from), (Action::Allow, Layer::Team));
        let none: Layered<'_, Policy> = Layered::default();
        let d = none.decide(Action::Warn, |p| p.for_server("x"));
        assert_eq!((d.value, d.from), (Action::Warn, Layer::Default));
        let local_only = Layered::new(None, Some(&local));
        assert_eq!(
            local_only
                .decide(Action::Warn, |p| p.for_server("fs"))
                .value,
            Action::Block
        );
    }

    #[test]
    fn limits_take_the_smaller_lists_combine_by_strictness() {
        let team = Policy {
            max_bytes: Some(1000),
            denied: vec!["rm"],
            allowed: Some(vec!["a", "b", "c"]),
            ..Policy::default()
        };
        let local = Policy {
            max_bytes: Some(5000),
            denied: vec!["curl"],
            allowed: Some(vec!["b", "c", "d"]),
            ..Policy::default()
        };
        let layered = Layered::new(Some(&team), Some(&local));
        let limit = layered.decide(Reverse(u64::MAX), |p| p.max_bytes.map(Reverse));
        assert_eq!(limit.value, Reverse(1000));
        assert_eq!(limit.overruled, Some(Reverse(5000)));
        assert_eq!(
            layered.deny(|p| p.denied.clone()),
            ["curl", "rm"].into_iter().collect()
        );
        assert_eq!(
            layered.allow(|p| p.allowed.clone()),
            Some(["b", "c"].into_iter().collect())
        );
        let team_only = Layered::new(Some(&team), None);
        assert_eq!(
            team_only.allow(|p| p.allowed.clone()).map(|s| s.len()),
            Some(3)
        );
        let neither: Layered<'_, Policy> = Layered::default();
        assert_eq!(neither.allow(|p| p.allowed.clone()), None);
    }
}
