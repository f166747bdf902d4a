//! Query texts too long to scan token by token (over `scan::SCAN_MAX`, up to the protocol's
//! 1 GiB): searched instead, storing nothing, for the words a statement with a tracked effect
//! must contain. Finding none proves the text changed no untracked state; finding one means its
//! effects are unknown, and the session pins.
//!
//! Two searches: one over a text in memory, with the scan's own lexing (string literals and
//! comments skipped), and a [`EffectWatch`] over the rest of a query longer than one packet,
//! which sees it packet by packet and so cannot follow quotes (it searches everything).

use super::lex::{is_word, Lexer};

/// The words (any case) at least one of which every statement with an
/// [`Effect`](super::Effect) that adds tracked state contains — checked by a test against
/// examples of each effect. Effects that only remove tracked state (`DROP TABLE`, `COMMIT`, …)
/// need not be listed: missing them keeps a session longer, never moves one wrongly.
pub const EFFECT_WORDS: &[&str] = &[
    "TEMPORARY",
    "LOCK",
    "UNLOCK",
    "PREPARE",
    "DEALLOCATE",
    "HANDLER",
    "XA",
    "GET_LOCK",
    "RELEASE_ALL_LOCKS",
    "TRANSACTION",
    "SAVEPOINT",
];

/// Longest entry of [`EFFECT_WORDS`], and a margin for the bytes around it.
const EFFECT_WORD_SPAN: usize = 32;

fn is_effect_word(w: &[u8]) -> bool {
    w.len() < EFFECT_WORD_SPAN
        && EFFECT_WORDS
            .iter()
            .any(|e| w.eq_ignore_ascii_case(e.as_bytes()))
}

/// Whether a text too long to scan may have effects: it contains one of [`EFFECT_WORDS`]
/// outside string literals and comments — or anywhere, when a string holds a backslash before
/// its quote, since `sql_mode` decides where such a string ends. Allocates nothing.
pub(super) fn may_have_effects(sql: &[u8]) -> bool {
    let mut lx = Lexer::new(sql);
    while let Some(w) = lx.next_word_span() {
        if is_effect_word(w) {
            return true;
        }
    }
    lx.escaped_quote && has_effect_word(sql)
}

/// Whether raw bytes contain one of [`EFFECT_WORDS`] as a whole word, quotes or not.
fn has_effect_word(bytes: &[u8]) -> bool {
    bytes.split(|&c| !is_word(c)).any(is_effect_word)
}

/// Watches the rest of a query over 16 MiB as it is relayed packet by packet: the scan saw only
/// the first packet. Lexing state does not carry across packets, so the rest is searched for
/// [`EFFECT_WORDS`] with no regard to quotes (a word cut by a packet boundary is caught by
/// searching the seam too). Holds a few bytes, whatever the query's length.
#[derive(Debug, Default)]
pub struct EffectWatch {
    /// The last bytes seen, for the seam with the next packet.
    tail: Vec<u8>,
    hit: bool,
}

impl EffectWatch {
    /// A watch following a first packet `first` (already scanned).
    pub fn after(first: &[u8]) -> Self {
        let mut w = Self::default();
        w.keep_tail(first);
        w
    }

    /// The next packet of the query.
    pub fn feed(&mut self, piece: &[u8]) {
        if self.hit {
            return;
        }
        let mut seam = std::mem::take(&mut self.tail);
        seam.extend_from_slice(piece.get(..EFFECT_WORD_SPAN).unwrap_or(piece));
        self.hit = has_effect_word(&seam) || has_effect_word(piece);
        if piece.len() >= EFFECT_WORD_SPAN {
            self.keep_tail(piece);
        } else {
            self.keep_tail(&seam);
        }
    }

    fn keep_tail(&mut self, bytes: &[u8]) {
        let from = bytes.len().saturating_sub(EFFECT_WORD_SPAN);
        self.tail.clear();
        self.tail
            .extend_from_slice(bytes.get(from..).unwrap_or_default());
    }

    /// Whether the rest may have effects.
    pub fn hit(&self) -> bool {
        self.hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql::session::analyze;

    /// One statement per [`Effect`](super::super::Effect) that adds tracked state.
    const WITH_EFFECTS: &[&str] = &[
        "CREATE TEMPORARY TABLE t (a int)",
        "LOCK TABLES t WRITE",
        "FLUSH TABLES WITH READ LOCK",
        "UNLOCK TABLES",
        "SELECT GET_LOCK('a', 1)",
        "SELECT RELEASE_ALL_LOCKS()",
        "PREPARE s FROM 'SELECT 1'",
        "DEALLOCATE PREPARE s",
        "DROP PREPARE s",
        "HANDLER t OPEN",
        "XA START 'x'",
        "SET TRANSACTION READ ONLY",
        "SAVEPOINT sp",
    ];

    #[test]
    fn every_statement_with_effects_contains_an_effect_word() {
        // the guard of the long-text check: a new effect must add its word to EFFECT_WORDS
        for sql in WITH_EFFECTS {
            let e: Vec<_> = analyze(sql.as_bytes())
                .parts
                .into_iter()
                .flat_map(|p| p.effects)
                .collect();
            assert!(!e.is_empty(), "{sql} has no effect");
            assert!(may_have_effects(sql.as_bytes()), "{sql}");
            let mut w = EffectWatch::after(b"SELECT 1; ");
            w.feed(sql.as_bytes());
            assert!(w.hit(), "{sql}");
        }
        for sql in [
            "SELECT 'lock', \"x\", `y` FROM t -- prepare",
            "INSERT INTO t VALUES ('temporary transaction', @lock) /* handler */",
            "SELECT locked, xa_id FROM t",
        ] {
            assert!(!may_have_effects(sql.as_bytes()), "{sql}");
        }
        assert!(may_have_effects(b"SELECT `GET_LOCK`('a', 1)"));
        // under NO_BACKSLASH_ESCAPES the string ends at `\'` and GET_LOCK runs
        assert!(may_have_effects(b"SELECT 'x\\', GET_LOCK('b', 0), ''"));
        assert!(!may_have_effects(
            b"INSERT INTO t VALUES ('O\\'Brien', 'smith')"
        ));
        // ...and then words in strings count too: conservative, for long texts only
        assert!(may_have_effects(
            b"INSERT INTO t VALUES ('O\\'Brien', 'lock')"
        ));
        assert!(may_have_effects(b"/*!40000 LOCK TABLES t READ */"));
    }

    #[test]
    fn the_watch_finds_an_effect_word_cut_by_a_packet_boundary() {
        let mut w = EffectWatch::after(b"SELECT 'x'; SELECT GET_");
        w.feed(b"LOCK('a', 1)");
        assert!(w.hit());
        let mut w = EffectWatch::after(b"SELECT 'x'; SELECT GET_LOCKS");
        w.feed(b"MITH(1)");
        assert!(!w.hit(), "GET_LOCKSMITH is no effect word");
        let mut w = EffectWatch::after(b"SELECT '");
        w.feed(&[b'x'; 100]);
        w.feed(b"'); XA START 'x'");
        assert!(w.hit());
    }
}
