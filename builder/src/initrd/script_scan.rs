//! Test-only: the command words a POSIX `sh` script runs, so that [`super::APPLETS`] can be
//! checked against capsem-init and cannot rot.
//!
//! Understands enough of the grammar for that: quotes, `\` line continuations, comments,
//! `$(…)` (scanned recursively), `$((…))`, `${…}`, redirections (their targets are not
//! commands), assignments before a command, `case` patterns, `for … in … do`, function
//! definitions, reserved words, and wrappers — commands whose arguments contain another command
//! (`exec CMD`, a helper like `must WHAT CMD…`) or run something outside the initrd (`chroot`).
//! What it does not understand (backquotes, here-documents) is an error, so a script that
//! outgrows it fails the test instead of hiding commands.

use std::collections::BTreeSet;

/// What a wrapper command does with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wrapper {
    /// After this many arguments comes a command run in the same environment (`exec`: 0).
    Runs(usize),
    /// Its arguments are a command run elsewhere (`chroot DIR CMD`): not ours to check.
    Opaque,
}

/// A command word: where, and whether it is literal (no expansion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Command {
    pub line: usize,
    pub word: String,
    pub literal: bool,
}

#[derive(Debug, Default)]
pub(super) struct Scan {
    pub commands: Vec<Command>,
    pub functions: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word { text: String, literal: bool, line: usize },
    Op(&'static str),
    Newline,
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    /// Bodies of `$(…)`, with their first line.
    subs: Vec<(String, usize)>,
}

const OPERATOR_CHARS: &[char] = &[';', '&', '|', '(', ')', '<', '>'];

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn tokens(&mut self) -> Result<Vec<Tok>, String> {
        let mut toks = Vec::new();
        loop {
            match self.peek(0) {
                None => return Ok(toks),
                Some(' ' | '\t') => {
                    self.bump();
                }
                Some('\\') if self.peek(1) == Some('\n') => {
                    self.bump();
                    self.bump();
                }
                Some('\n') => {
                    self.bump();
                    toks.push(Tok::Newline);
                }
                Some('#') => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                Some('<' | '>') => self.redirect()?,
                Some(c) if OPERATOR_CHARS.contains(&c) => {
                    self.bump();
                    let two = |next: char, op2: &'static str, op1: &'static str, lexer: &mut Self| {
                        if lexer.peek(0) == Some(next) {
                            lexer.bump();
                            op2
                        } else {
                            op1
                        }
                    };
                    let op = match c {
                        ';' => two(';', ";;", ";", self),
                        '&' => two('&', "&&", "&", self),
                        '|' => two('|', "||", "|", self),
                        '(' => "(",
                        _ => ")",
                    };
                    toks.push(Tok::Op(op));
                }
                Some(_) => {
                    let line = self.line;
                    let (text, literal) = self.word()?;
                    if !text.is_empty()
                        && text.chars().all(|c| c.is_ascii_digit())
                        && matches!(self.peek(0), Some('<' | '>'))
                    {
                        self.redirect()?; // `2>&1`: the digits are a file descriptor
                    } else {
                        toks.push(Tok::Word { text, literal, line });
                    }
                }
            }
        }
    }

    /// A redirection operator and its target, which is dropped (it is not a command).
    fn redirect(&mut self) -> Result<(), String> {
        let first = self.bump().expect("called on < or >");
        if first == '<' && self.peek(0) == Some('<') {
            return Err(format!("line {}: here-documents are not supported", self.line));
        }
        if matches!(self.peek(0), Some('>' | '&' | '|')) && !(first == '<' && self.peek(0) == Some('|')) {
            self.bump();
        }
        while matches!(self.peek(0), Some(' ' | '\t')) {
            self.bump();
        }
        let (target, _) = self.word()?;
        if target.is_empty() {
            return Err(format!("line {}: redirection without a target", self.line));
        }
        Ok(())
    }

    /// One word, quotes removed; `literal` is false when it contains an expansion.
    fn word(&mut self) -> Result<(String, bool), String> {
        let mut text = String::new();
        let mut literal = true;
        while let Some(c) = self.peek(0) {
            match c {
                ' ' | '\t' | '\n' => break,
                c if OPERATOR_CHARS.contains(&c) => break,
                '\\' => {
                    self.bump();
                    match self.bump() {
                        Some('\n') | None => {}
                        Some(escaped) => text.push(escaped),
                    }
                }
                '\'' => {
                    self.bump();
                    loop {
                        match self.bump() {
                            None => return Err(format!("line {}: unterminated '", self.line)),
                            Some('\'') => break,
                            Some(c) => text.push(c),
                        }
                    }
                }
                '"' => {
                    self.bump();
                    loop {
                        match self.peek(0) {
                            None => return Err(format!("line {}: unterminated \"", self.line)),
                            Some('"') => {
                                self.bump();
                                break;
                            }
                            Some('\\') => {
                                self.bump();
                                if let Some(c) = self.bump() {
                                    text.push(c);
                                }
                            }
                            Some('$') => {
                                literal = false;
                                self.dollar(&mut text)?;
                            }
                            Some('`') => return Err(format!("line {}: backquotes are not supported", self.line)),
                            Some(c) => {
                                self.bump();
                                text.push(c);
                            }
                        }
                    }
                }
                '$' => {
                    literal = false;
                    self.dollar(&mut text)?;
                }
                '`' => return Err(format!("line {}: backquotes are not supported", self.line)),
                c => {
                    self.bump();
                    text.push(c);
                }
            }
        }
        Ok((text, literal))
    }

    /// `$…` at the cursor: `$((…))` and `${…}` are consumed into `text`; the body of `$(…)` is
    /// saved for a recursive scan.
    fn dollar(&mut self, text: &mut String) -> Result<(), String> {
        self.bump();
        text.push('$');
        match (self.peek(0), self.peek(1)) {
            (Some('('), Some('(')) => {
                let body = self.balanced('(', ')')?;
                text.push_str(&body);
            }
            (Some('('), _) => {
                let line = self.line;
                let body = self.balanced('(', ')')?;
                self.subs.push((body[1..body.len() - 1].to_owned(), line));
                text.push_str("(…)");
            }
            (Some('{'), _) => {
                let body = self.balanced('{', '}')?;
                text.push_str(&body);
            }
            _ => {}
        }
        Ok(())
    }

    /// From an `open` at the cursor to its matching `close`, skipping quoted text; returned with
    /// both delimiters.
    fn balanced(&mut self, open: char, close: char) -> Result<String, String> {
        let start_line = self.line;
        let mut out = String::new();
        let mut depth = 0usize;
        let mut quote: Option<char> = None;
        loop {
            let Some(c) = self.bump() else {
                return Err(format!("line {start_line}: unterminated {open}…{close}"));
            };
            out.push(c);
            match (quote, c) {
                (Some('\''), '\'') | (Some('"'), '"') => quote = None,
                (Some('"'), '\\') | (None, '\\') => {
                    if let Some(next) = self.bump() {
                        out.push(next);
                    }
                }
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '`') => return Err(format!("line {}: backquotes are not supported", self.line)),
                (None, c) if c == open => depth += 1,
                (None, c) if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(out);
                    }
                }
                (None, _) => {}
            }
        }
    }
}

fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    /// After `case`: the subject, then `in`.
    CaseWord,
    /// Inside `case … in`, before a pattern's `)`.
    CasePattern,
    /// After `for`, until `do`.
    ForHeader,
}

/// Scans `script` (line numbers from 1).
pub(super) fn scan(script: &str, wrappers: &[(&str, Wrapper)]) -> Result<Scan, String> {
    let mut out = Scan::default();
    scan_into(script, 1, wrappers, &mut out)?;
    Ok(out)
}

fn scan_into(script: &str, first_line: usize, wrappers: &[(&str, Wrapper)], out: &mut Scan) -> Result<(), String> {
    let mut lexer = Lexer { chars: script.chars().collect(), pos: 0, line: first_line, subs: Vec::new() };
    let toks = lexer.tokens()?;
    let wrapper_of = |word: &str| wrappers.iter().find(|(w, _)| *w == word).map(|(_, k)| *k);

    let mut mode = Mode::Normal;
    let mut cmd_pos = true;
    let mut pending: Option<Wrapper> = None;
    let mut i = 0;
    while i < toks.len() {
        let tok = &toks[i];
        i += 1;
        match (mode, tok) {
            (Mode::Normal, Tok::Newline) => {
                cmd_pos = true;
                pending = None;
            }
            (_, Tok::Newline) => {}
            (_, Tok::Op(";;")) => {
                mode = Mode::CasePattern;
                pending = None;
            }
            (Mode::CasePattern, Tok::Op("(" | "|")) => {}
            (Mode::CasePattern, Tok::Op(")")) => {
                mode = Mode::Normal;
                cmd_pos = true;
            }
            (Mode::CasePattern, Tok::Word { text, .. }) => {
                if text == "esac" {
                    mode = Mode::Normal;
                    cmd_pos = false;
                }
            }
            (Mode::CaseWord, Tok::Word { text, .. }) => {
                if text == "in" {
                    mode = Mode::CasePattern;
                }
            }
            (Mode::ForHeader, Tok::Word { text, .. }) => {
                if text == "do" {
                    mode = Mode::Normal;
                    cmd_pos = true;
                }
            }
            (Mode::ForHeader, Tok::Op(";")) => {}
            (Mode::CasePattern | Mode::CaseWord | Mode::ForHeader, Tok::Op(op)) => {
                return Err(format!("unexpected {op:?} in a case or for header"));
            }
            (Mode::Normal, Tok::Op(")")) => {
                cmd_pos = false;
                pending = None;
            }
            (Mode::Normal, Tok::Op(_)) => {
                cmd_pos = true;
                pending = None;
            }
            (Mode::Normal, Tok::Word { text, literal, line }) => {
                let command = if cmd_pos {
                    if *literal {
                        match text.as_str() {
                            "case" => {
                                mode = Mode::CaseWord;
                                continue;
                            }
                            "for" => {
                                mode = Mode::ForHeader;
                                continue;
                            }
                            "if" | "then" | "else" | "elif" | "do" | "while" | "until" | "!" | "{" => continue,
                            "fi" | "done" | "esac" | "}" => {
                                cmd_pos = false;
                                continue;
                            }
                            _ => {}
                        }
                    }
                    if is_assignment(text) {
                        continue;
                    }
                    if toks.get(i) == Some(&Tok::Op("(")) && toks.get(i + 1) == Some(&Tok::Op(")")) {
                        out.functions.insert(text.clone());
                        i += 2;
                        continue;
                    }
                    true
                } else {
                    match pending {
                        Some(Wrapper::Runs(0)) => true,
                        Some(Wrapper::Runs(n)) => {
                            pending = Some(Wrapper::Runs(n - 1));
                            false
                        }
                        Some(Wrapper::Opaque) | None => false,
                    }
                };
                if command {
                    out.commands.push(Command { line: *line, word: text.clone(), literal: *literal });
                    cmd_pos = false;
                    pending = wrapper_of(text);
                }
            }
        }
    }
    if mode != Mode::Normal {
        return Err(format!("unterminated case or for ({mode:?}) at the end"));
    }
    for (body, line) in lexer.subs {
        scan_into(&body, line, wrappers, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRAPPERS: &[(&str, Wrapper)] =
        &[("exec", Wrapper::Runs(0)), ("must", Wrapper::Runs(1)), ("in_root", Wrapper::Opaque)];

    #[test]
    fn finds_every_kind_of_command_position() {
        let script = r#"#!/bin/sh
# a comment naming mount
f() {
    must "what (x)" \
        mount -t proc proc /proc
    err=$("$@" 2>&1 >/dev/null) && return 0
}
X=$(tool a) || Y=1
case "$a" in
    a|b) sleep 1 ;;
    "c d" | *) exec switch_root / /x ;;
esac
for d in a b; do mkdir "$d"; done
if [ -e /x ] && ! grep -q x /y; then echo "$(hostname -s)"; fi
echo 'umount
cat' >/dev/null 2>&1
in_root ip link
{ sync; } </dev/null
NL='
'
v=${x%"$NL"} ; chmod 0 "${v:+ (a)}"
tries=$((tries + 1)); exec </dev/console >/dev/console 2>&1
"#;
        let scan = scan(script, WRAPPERS).unwrap();
        let got: Vec<(usize, &str, bool)> =
            scan.commands.iter().map(|c| (c.line, c.word.as_str(), c.literal)).collect();
        assert_eq!(
            got,
            [
                (4, "must", true),
                (5, "mount", true),
                (6, "return", true),
                (10, "sleep", true),
                (11, "exec", true),
                (11, "switch_root", true),
                (13, "mkdir", true),
                (14, "[", true),
                (14, "grep", true),
                (14, "echo", true),
                (15, "echo", true),
                (17, "in_root", true),
                (18, "sync", true),
                (21, "chmod", true),
                (22, "exec", true),
                // $(…) bodies, scanned after the text around them
                (6, "$@", false),
                (8, "tool", true),
                (14, "hostname", true),
            ]
        );
        assert_eq!(scan.functions.into_iter().collect::<Vec<_>>(), ["f"]);
    }

    #[test]
    fn unsupported_constructs_are_errors() {
        assert!(scan("echo `date`\n", WRAPPERS).unwrap_err().contains("backquotes"));
        assert!(scan("cat <<EOF\nx\nEOF\n", WRAPPERS).unwrap_err().contains("here-documents"));
        assert!(scan("echo 'open\n", WRAPPERS).unwrap_err().contains("unterminated"));
        assert!(scan("case x in\n", WRAPPERS).unwrap_err().contains("unterminated case"));
    }
}
