//! The statement scan's tokenizer: comments skipped (executable comments read as code), quoted
//! strings and names unquoted, everything else one byte at a time, and a query split into its
//! statements. It runs on hostile bytes, so every read is checked and every step moves forward.

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    /// Keyword or identifier, upper-cased when unquoted; backquoted names keep their case.
    Word(String, bool),
    /// A quoted string's contents.
    Str(Vec<u8>),
    /// A user variable (`@name`).
    Var,
    /// Any other byte.
    Punct(u8),
}

/// A conservative tokenizer: comments skipped (executable comments read as code), quoted
/// strings and names unquoted, everything else one byte at a time. Every read is checked, and
/// every step moves forward or stops at the end, so no input can make it panic or loop.
pub(super) struct Lexer<'a> {
    s: &'a [u8],
    pub(super) i: usize,
    /// A string held a backslash before its own quote (`'O\'Brien'`): under
    /// `NO_BACKSLASH_ESCAPES` the server ends the string there, and reads what follows as code.
    pub(super) escaped_quote: bool,
}

pub(super) fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl<'a> Lexer<'a> {
    pub(super) fn new(s: &'a [u8]) -> Self {
        Self {
            s,
            i: 0,
            escaped_quote: false,
        }
    }

    /// The byte `ahead` places past the current one.
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.s.get(self.i.checked_add(ahead)?).copied()
    }

    /// Moves `n` bytes on, never past the end.
    fn bump(&mut self, n: usize) {
        self.i = self.i.saturating_add(n).min(self.s.len());
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek(0).is_some_and(&f) {
            self.bump(1);
        }
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek(0) {
            if c.is_ascii_whitespace() {
                self.bump(1);
            } else if c == b'#'
                || (c == b'-'
                    && self.peek(1) == Some(b'-')
                    && self.peek(2).is_none_or(|c| c.is_ascii_whitespace()))
            {
                self.skip_while(|c| c != b'\n');
            } else if c == b'/' && self.peek(1) == Some(b'*') {
                if self.peek(2) == Some(b'!') {
                    // executable comment: its contents are code
                    self.bump(3);
                    self.skip_while(|c| c.is_ascii_digit());
                } else if self.peek(2) == Some(b'M') && self.peek(3) == Some(b'!') {
                    self.bump(4);
                    self.skip_while(|c| c.is_ascii_digit());
                } else {
                    self.bump(2);
                    while self.peek(0).is_some()
                        && !(self.peek(0) == Some(b'*') && self.peek(1) == Some(b'/'))
                    {
                        self.bump(1);
                    }
                    self.bump(2);
                }
            } else if c == b'*' && self.peek(1) == Some(b'/') {
                // end of an executable comment
                self.bump(2);
            } else {
                return;
            }
        }
    }

    /// The next token and where it starts.
    pub(super) fn next_tok(&mut self) -> Option<(Tok, usize)> {
        self.skip_space();
        let start = self.i;
        let c = self.peek(0)?;
        let tok = if is_word(c) {
            self.skip_while(is_word);
            let w = self.s.get(start..self.i).unwrap_or_default();
            Tok::Word(String::from_utf8_lossy(w).to_ascii_uppercase(), false)
        } else if c == b'`' {
            Tok::Word(
                String::from_utf8_lossy(&self.quoted(b'`')).into_owned(),
                true,
            )
        } else if c == b'\'' || c == b'"' {
            Tok::Str(self.quoted(c))
        } else if c == b'@' && self.peek(1) != Some(b'@') {
            self.bump(1);
            match self.peek(0) {
                Some(q @ (b'`' | b'\'' | b'"')) => {
                    self.quoted(q);
                }
                _ => self.skip_while(|c| is_word(c) || c == b'.'),
            }
            Tok::Var
        } else {
            self.bump(1);
            Tok::Punct(c)
        };
        Some((tok, start))
    }

    /// A quoted token's contents (escapes resolved roughly: enough for names). An unterminated
    /// one runs to the end of the text.
    fn quoted(&mut self, q: u8) -> Vec<u8> {
        let mut out = Vec::new();
        self.quoted_into(q, Some(&mut out));
        out
    }

    /// Steps over a quoted token, copying its contents to `out` when given.
    fn quoted_into(&mut self, q: u8, mut out: Option<&mut Vec<u8>>) {
        self.bump(1);
        while let Some(c) = self.peek(0) {
            if c == b'\\' && q != b'`' {
                // a backslash at the very end escapes nothing (issue 9: `;'\` once stepped
                // past the end here)
                self.escaped_quote |= self.peek(1) == Some(q);
                if let Some(o) = out.as_deref_mut() {
                    o.extend(self.peek(1));
                }
                self.bump(2);
            } else if c == q {
                self.bump(1);
                if self.peek(0) != Some(q) {
                    return;
                }
                if let Some(o) = out.as_deref_mut() {
                    o.push(q);
                }
                self.bump(1);
            } else {
                if let Some(o) = out.as_deref_mut() {
                    o.push(c);
                }
                self.bump(1);
            }
        }
    }

    /// The next word-like span, as [`Lexer::next_tok`] would see it but storing nothing: an
    /// unquoted word, or the contents of a backquoted or double-quoted name (a name in quotes
    /// can still call a function, and `"…"` is a name under `ANSI_QUOTES`). String literals,
    /// comments, variables and punctuation are stepped over.
    pub(super) fn next_word_span(&mut self) -> Option<&'a [u8]> {
        loop {
            self.skip_space();
            let start = self.i;
            let c = self.peek(0)?;
            if is_word(c) {
                self.skip_while(is_word);
                return self.s.get(start..self.i);
            } else if c == b'`' || c == b'"' {
                self.quoted_into(c, None);
                let end = self.i.saturating_sub(1).max(start + 1);
                return self.s.get(start + 1..end);
            } else if c == b'\'' {
                self.quoted_into(c, None);
            } else if c == b'@' {
                self.bump(1);
                match self.peek(0) {
                    Some(q @ (b'`' | b'\'' | b'"')) => self.quoted_into(q, None),
                    _ => self.skip_while(|c| is_word(c) || c == b'.'),
                }
            } else {
                self.bump(1);
            }
        }
    }
}

/// Splits a query into statements: tokens and the byte range of each statement.
pub(super) fn statements(sql: &[u8]) -> Vec<(Vec<Tok>, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut lx = Lexer::new(sql);
    let mut toks = Vec::new();
    let mut start = None;
    let mut end = 0;
    while let Some((t, at)) = lx.next_tok() {
        if t == Tok::Punct(b';') {
            if let Some(s) = start.take() {
                out.push((std::mem::take(&mut toks), s..end));
            }
            continue;
        }
        start.get_or_insert(at);
        toks.push(t);
        end = lx.i;
    }
    if let Some(s) = start {
        out.push((toks, s..end));
    }
    out
}

pub(super) fn word(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Word(w, false)) => Some(w.as_str()),
        _ => None,
    }
}

/// A possibly qualified name starting at `toks[i]`, lower-cased; returns it and the index after.
pub(super) fn name_at(toks: &[Tok], i: usize) -> Option<(String, usize)> {
    let mut i = i;
    let mut last;
    loop {
        last = match toks.get(i)? {
            Tok::Word(w, _) => w.to_ascii_lowercase(),
            _ => return None,
        };
        i += 1;
        if toks.get(i) == Some(&Tok::Punct(b'.')) {
            i += 1;
            continue;
        }
        return Some((last, i));
    }
}

pub(super) fn cheap_contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}
