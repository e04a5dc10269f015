"""What the lint scripts share: Rust source with its test modules blanked."""

MARKER = "#[cfg(test)]\nmod tests {"


def without_tests(text):
    """The text with its `#[cfg(test)] mod tests { ... }` blocks blanked (braces matched,
    so code after a test module is still read; newlines kept, so lines still count)."""
    while (start := text.find(MARKER)) >= 0:
        depth, end = 0, start + len(MARKER) - 1
        while end < len(text):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
            if depth == 0:
                break
        text = text[:start] + "\n" * text.count("\n", start, end) + text[end:]
    return text
