//! Text from machines and marketplaces (a job's log, an error a host wrote,
//! status messages quoting either) can carry terminal control sequences that
//! rewrite the screen or the window title. What goes to a terminal keeps only
//! newlines, tabs and carriage returns (progress bars) of the control characters.

use std::borrow::Cow;

/// `text` with every control character but newline, tab and carriage return shown as `?`.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().map(|c| if is_unsafe(c) { '?' } else { c }).collect())
}

fn is_unsafe(c: char) -> bool {
    c.is_control() && !matches!(c, '\n' | '\t' | '\r')
}

/// Like `printable`, on raw bytes (a stream may split a character): C0 controls,
/// DEL and the UTF-8 form of the C1 controls become `?`; everything else passes as is.
pub fn printable_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let byte = data[i];
        if byte == 0xc2 && data.get(i + 1).is_some_and(|next| (0x80..=0x9f).contains(next)) {
            out.push(b'?');
            i += 2;
            continue;
        }
        out.push(if (byte < 0x20 && !matches!(byte, b'\n' | b'\t' | b'\r')) || byte == 0x7f { b'?' } else { byte });
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_c1_controls_never_reach_the_terminal() {
        let hostile = "done\x1b]0;owned\x07\x1b[2J\u{9b}31m\r\nnext\tline é";
        assert_eq!(printable(hostile), "done?]0;owned??[2J?31m\r\nnext\tline é");
        assert_eq!(String::from_utf8(printable_bytes(hostile.as_bytes())).unwrap(), printable(hostile));
        assert!(matches!(printable("plain\ntext"), Cow::Borrowed(_)));
    }
}
