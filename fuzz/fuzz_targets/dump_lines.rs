//! `offheap load` reads lines that anyone may have written: the text form
//! (`escape(key) TAB escape(value)`) and JSON lines. Every input either decodes or gives a
//! `DecodeError` (never a panic), and what decodes formats back to a line that decodes to the
//! same bytes. Arbitrary byte strings always round-trip through both forms.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use offheap_cli::codec::{
    format_json_line, format_line, from_hex, parse_json_line, parse_line, to_hex, unescape,
};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    line: &'a str,
    key: &'a [u8],
    value: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    // Untrusted lines: decode or error, and what decodes round-trips.
    if let Ok((k, v)) = parse_line(input.line) {
        assert_eq!(parse_line(&format_line(&k, &v)).unwrap(), (k, v));
    }
    if let Ok((k, v)) = parse_json_line(input.line) {
        assert_eq!(parse_json_line(&format_json_line(&k, &v)).unwrap(), (k, v));
    }
    if let Ok(b) = unescape(input.line) {
        assert_eq!(unescape(&offheap_cli::codec::escape(&b)).unwrap(), b);
    }
    if let Ok(b) = from_hex(input.line) {
        assert_eq!(from_hex(&to_hex(&b)).unwrap(), b);
    }
    // Every pair of byte strings survives both line forms.
    let (k, v) = (input.key.to_vec(), input.value.to_vec());
    let line = format_line(&k, &v);
    assert!(!line.contains('\n'));
    assert_eq!(parse_line(&line).unwrap(), (k.clone(), v.clone()));
    let json = format_json_line(&k, &v);
    assert!(!json.contains('\n'));
    assert_eq!(parse_json_line(&json).unwrap(), (k, v));
});
