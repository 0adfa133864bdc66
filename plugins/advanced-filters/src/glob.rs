//! Glob patterns for policy scopes: `*` matches any run of characters (dots and brackets
//! included, so `params.arguments.*` covers every path below `arguments`), `?` one character,
//! everything else itself; ASCII case is ignored for server, tool and method names, never for
//! JSON paths or values.
//!
//! Hand-written: the matcher is twenty lines, and the glob crates are built around file paths
//! (separators, `**`, character classes) that these strings do not have.

/// A compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Glob {
    pattern: Vec<char>,
    fold_case: bool,
}

impl Glob {
    /// A glob from `text`; `fold_case` ignores ASCII case.
    pub(crate) fn new(text: &str, fold_case: bool) -> Glob {
        let fold = |c: char| if fold_case { c.to_ascii_lowercase() } else { c };
        Glob {
            pattern: text.chars().map(fold).collect(),
            fold_case,
        }
    }

    /// Whether `s` matches the whole pattern.
    pub(crate) fn matches(&self, s: &str) -> bool {
        let fold = |c: char| {
            if self.fold_case {
                c.to_ascii_lowercase()
            } else {
                c
            }
        };
        let s: Vec<char> = s.chars().map(fold).collect();
        // The classic linear-time wildcard match: remember the last `*` and where it resumed.
        let (p, mut pi, mut si) = (&self.pattern, 0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
                pi += 1;
                si += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, si));
                pi += 1;
            } else if let Some((sp, ss)) = star {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_questions_and_case() {
        let g = Glob::new("params.arguments.*", false);
        assert!(g.matches("params.arguments.headers.X-Key"));
        assert!(g.matches("params.arguments."));
        assert!(!g.matches("params.argument"));
        assert!(!g.matches("PARAMS.arguments.x"));
        let g = Glob::new("Send_*", true);
        assert!(g.matches("send_email") && g.matches("SEND_SMS"));
        assert!(!g.matches("resend_email"));
        let g = Glob::new("a?c*d", false);
        assert!(g.matches("abcd") && g.matches("abcxxd") && !g.matches("acd"));
        assert!(Glob::new("*", false).matches(""));
        assert!(Glob::new("**x", false).matches("yyx"));
        assert!(!Glob::new("", false).matches("a"));
        // Many stars do not make it slow (linear in the text).
        let long = "a".repeat(10_000);
        assert!(!Glob::new("*a*a*a*a*a*b", false).matches(&long));
    }
}
