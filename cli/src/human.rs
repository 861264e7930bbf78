//! What human output must not look like: Rust's debug formatting (`Some(3)`, `None`, `["a"]`, `Foo { .. }`) leaking
//! into text meant for people. The CLI's rendering tests and the process test that runs every command check their
//! output with [`debug_artifacts`].

/// Fragments of `text` that look like Rust debug formatting, with what gave each away; empty when the text is clean.
pub fn debug_artifacts(text: &str) -> Vec<String> {
    const TELLTALES: [&str; 9] = ["Some(", "None", "Ok(", "Err(", "\\\"", "[\"", "\"]", " { ", "Duration"];
    let mut found: Vec<String> = TELLTALES
        .iter()
        .filter(|telltale| text.contains(*telltale))
        .map(|telltale| format!("`{telltale}` in: {}", line_with(text, telltale)))
        .collect();
    // A list printed with {:?}: `[1, 2]` or `[]` after a word.
    for line in text.lines() {
        let bracketed = line.find('[').zip(line.rfind(']')).filter(|(open, close)| open < close);
        if let Some((open, close)) = bracketed {
            let inside = &line[open + 1..close];
            let numbers = !inside.is_empty() && inside.split(", ").all(|item| item.parse::<i64>().is_ok());
            let addresses = inside.split(", ").all(|item| item.parse::<std::net::SocketAddr>().is_ok());
            if numbers || (!inside.is_empty() && addresses) || (inside.is_empty() && line[..open].ends_with(' ')) {
                found.push(format!("a debug-printed list in: {line}"));
            }
        }
    }
    found
}

fn line_with<'a>(text: &'a str, fragment: &str) -> &'a str {
    text.lines().find(|line| line.contains(fragment)).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::debug_artifacts;

    #[test]
    fn debug_formatting_is_recognised() {
        for text in
            ["leader Some(1)", "index None", "members [1, 2]", "lagging []", "addrs [127.0.0.1:7001]", "tags [\"a\"]"]
        {
            assert!(!debug_artifacts(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn plain_text_passes() {
        for text in ["leader 1, term 3", "no leader", "addresses 127.0.0.1:7001, [::1]:7002", "[2026-12-06] done", "-"]
        {
            assert!(debug_artifacts(text).is_empty(), "{text}: {:?}", debug_artifacts(text));
        }
    }
}
