//! Showing untrusted text (file names from list files, paths from pipelines) so that what
//! is invisible when printed, and makes two names differ, can be seen.

/// True for characters that print as nothing or as a plain space and so hide in a path:
/// C0/C1 controls and DEL, the byte-order mark U+FEFF, zero-width and other format
/// characters (U+200B..U+200F, U+2060..U+206F, U+00AD soft hyphen, bidi controls), and
/// non-ASCII spaces (U+00A0 no-break space, U+2000..U+200A, U+202F, U+205F, U+3000, ...).
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00A0}' | '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}'
            | '\u{1680}' | '\u{180E}' | '\u{2000}'..='\u{200F}' | '\u{2028}'..='\u{202F}'
            | '\u{205F}'..='\u{206F}' | '\u{3000}' | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
}

/// `s` with every [`is_invisible`] character written as a Rust escape (`\u{feff}`), so a
/// path that differs from the file on disk only by an invisible character shows it.
pub fn escape_invisible(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_invisible(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// A path for a message: lossy UTF-8 with invisible characters escaped.
pub fn show_path(p: &std::path::Path) -> String {
    escape_invisible(&p.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_escaped_and_the_rest_kept() {
        let p = std::path::Path::new("/d/student\u{200b}.safetensors\u{a0}");
        assert_eq!(show_path(p), "/d/student\\u{200b}.safetensors\\u{a0}");
        assert_eq!(escape_invisible("café ü/a b\tc"), "café ü/a b\\u{9}c");
    }
}
