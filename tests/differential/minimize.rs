//! Shrinking a diverging script to a shortest one that still diverges: delta debugging
//! (Zeller's ddmin) over its commands, then one pass dropping single commands. Every candidate
//! is run on both sides, so a script found here reproduces on its own.

use crate::observe::Divergence;
use crate::script::Script;

/// The smallest script found whose two runs still differ, with that difference. `diverges` runs
/// a candidate on both sides; `budget` caps how many candidates are tried.
pub fn minimize(
    script: &Script,
    first: Divergence,
    budget: usize,
    mut diverges: impl FnMut(&Script) -> Option<Divergence>,
) -> (Script, Divergence, usize) {
    let mut best = script.clone();
    let mut best_div = first;
    let mut tries = 0;
    let mut n = 2usize;
    let mut attempt = |cand: &Script, tries: &mut usize| -> Option<Divergence> {
        *tries += 1;
        diverges(cand)
    };
    while best.cmds.len() >= 2 && tries < budget {
        let len = best.cmds.len();
        let chunk = len.div_ceil(n);
        let mut reduced = false;
        let mut start = 0;
        while start < len && tries < budget {
            let end = (start + chunk).min(len);
            let mut cand = best.clone();
            cand.cmds.drain(start..end);
            if !cand.cmds.is_empty() {
                if let Some(d) = attempt(&cand, &mut tries) {
                    best = cand;
                    best_div = d;
                    reduced = true;
                    break;
                }
            }
            start = end;
        }
        if reduced {
            n = n.saturating_sub(1).max(2);
        } else if n >= len {
            break;
        } else {
            n = (n * 2).min(len);
        }
    }
    // One command at a time, from the end (later commands depend on earlier ones).
    let mut i = best.cmds.len();
    while i > 0 && tries < budget {
        i -= 1;
        if best.cmds.len() < 2 {
            break;
        }
        let mut cand = best.clone();
        cand.cmds.remove(i);
        if let Some(d) = attempt(&cand, &mut tries) {
            best = cand;
            best_div = d;
        }
    }
    (best, best_div, tries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::Cmd;

    fn div() -> Divergence {
        Divergence {
            at: None,
            what: String::new(),
            direct: String::new(),
            proxied: String::new(),
        }
    }

    #[test]
    fn a_divergence_needing_two_commands_shrinks_to_those_two() {
        let cmds: Vec<Cmd> = (0..30).map(|i| Cmd::Query(format!("q{i}"))).collect();
        let script = Script {
            seed: 1,
            deprecate_eof: false,
            cmds,
        };
        let needs = |s: &Script| {
            let has = |q: &str| s.cmds.contains(&Cmd::Query(q.into()));
            (has("q7") && has("q21")).then(div)
        };
        let (min, _, tries) = minimize(&script, div(), 500, needs);
        assert_eq!(
            min.cmds,
            vec![Cmd::Query("q7".into()), Cmd::Query("q21".into())]
        );
        assert!(tries < 100, "{tries} tries");
    }
}
