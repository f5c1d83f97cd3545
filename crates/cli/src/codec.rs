//! Text forms of byte strings: hex, the escaped form of `dump`'s lines, and JSON lines.
//!
//! Every form round-trips: `unescape(escape(b)) == b` and `from_hex(to_hex(b)) == b` for
//! every byte string `b`, and [`parse_line`] reads back what [`format_line`] writes.

use std::fmt::Write as _;

/// A byte string that could not be decoded; the message says where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// Lower-case hex of `b`, two digits per byte.
pub fn to_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The bytes of a hex string (either case, an even number of digits).
pub fn from_hex(s: &str) -> Result<Vec<u8>, DecodeError> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return err(format!("hex string of odd length {}", b.len()));
    }
    b.chunks(2)
        .enumerate()
        .map(|(i, p)| match (hex_digit(p[0]), hex_digit(p[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => err(format!("not a hex digit at position {}", 2 * i)),
        })
        .collect()
}

/// `b` with every byte that is not printable ASCII, and `\`, written as an escape:
/// `\\`, `\t`, `\n`, `\r` or `\xHH`. The result holds no tab and no line break.
pub fn escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &x in b {
        match x {
            b'\\' => s.push_str("\\\\"),
            b'\t' => s.push_str("\\t"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            0x20..=0x7e => s.push(x as char),
            _ => {
                let _ = write!(s, "\\x{x:02x}");
            }
        }
    }
    s
}

/// The bytes that [`escape`] wrote as `s`. Bytes that need no escape may also appear
/// unescaped (so any UTF-8 text without `\`, tab or line break reads as itself).
pub fn unescape(s: &str) -> Result<Vec<u8>, DecodeError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'\\') => out.push(b'\\'),
            Some(b't') => out.push(b'\t'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b'x') => {
                let d = |j: usize| b.get(j).copied().and_then(hex_digit);
                match (d(i + 2), d(i + 3)) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return err(format!("bad \\x escape at byte {i}")),
                }
                i += 2;
            }
            _ => return err(format!("bad escape at byte {i}")),
        }
        i += 2;
    }
    Ok(out)
}

/// One pair as a line of `dump`'s text form: `escape(key) TAB escape(value)` (no newline).
pub fn format_line(key: &[u8], value: &[u8]) -> String {
    let mut s = escape(key);
    s.push('\t');
    s.push_str(&escape(value));
    s
}

/// Reads a line written by [`format_line`] (a trailing `\n` or `\r\n` is ignored).
pub fn parse_line(line: &str) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let Some((k, v)) = line.split_once('\t') else {
        return err("no tab between key and value");
    };
    if v.contains('\t') {
        return err("more than one tab (a tab inside a key or value must be written \\t)");
    }
    Ok((unescape(k)?, unescape(v)?))
}

/// Adds `name` (a string when `b` is UTF-8) or `name_hex` (hex otherwise) to `obj`.
fn put_field(obj: &mut serde_json::Map<String, serde_json::Value>, name: &str, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(s) => obj.insert(name.to_string(), s.into()),
        Err(_) => obj.insert(format!("{name}_hex"), to_hex(b).into()),
    };
}

/// One pair as a JSON object on one line: `{"key":"..","value":".."}`, where a key or value
/// that is not UTF-8 is written as `key_hex` / `value_hex` instead.
pub fn format_json_line(key: &[u8], value: &[u8]) -> String {
    let mut obj = serde_json::Map::new();
    put_field(&mut obj, "key", key);
    put_field(&mut obj, "value", value);
    serde_json::Value::Object(obj).to_string()
}

fn get_field(v: &serde_json::Value, name: &str) -> Result<Vec<u8>, DecodeError> {
    if let Some(s) = v.get(name) {
        return match s.as_str() {
            Some(s) => Ok(s.as_bytes().to_vec()),
            None => err(format!("\"{name}\" is not a string")),
        };
    }
    match v.get(format!("{name}_hex")).map(|s| s.as_str()) {
        Some(Some(s)) => from_hex(s),
        Some(None) => err(format!("\"{name}_hex\" is not a string")),
        None => err(format!("no \"{name}\" or \"{name}_hex\" field")),
    }
}

/// Reads a line written by [`format_json_line`].
pub fn parse_json_line(line: &str) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| DecodeError(format!("invalid JSON: {e}")))?;
    if !v.is_object() {
        return err("not a JSON object");
    }
    Ok((get_field(&v, "key")?, get_field(&v, "value")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![
            vec![],
            b"plain".to_vec(),
            b"tab\there\nnl\\bs\r".to_vec(),
            "h\u{e9}llo \u{2603}".as_bytes().to_vec(),
            (0..=255u8).collect(),
        ];
        v.push(b"\\x4".to_vec());
        v
    }

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        for s in samples() {
            assert_eq!(from_hex(&to_hex(&s)).unwrap(), s);
        }
        assert_eq!(from_hex("0aFF").unwrap(), vec![10, 255]);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }

    #[test]
    fn escape_round_trips_and_has_no_separators() {
        for s in samples() {
            let e = escape(&s);
            assert!(!e.contains('\t') && !e.contains('\n') && !e.contains('\r'));
            assert_eq!(unescape(&e).unwrap(), s);
        }
        assert_eq!(unescape("caf\u{e9}").unwrap(), "caf\u{e9}".as_bytes());
        assert!(unescape("bad\\").is_err());
        assert!(unescape("bad\\q").is_err());
        assert!(unescape("bad\\x1").is_err());
    }

    #[test]
    fn lines_round_trip() {
        for k in samples() {
            for v in samples() {
                assert_eq!(
                    parse_line(&format_line(&k, &v)).unwrap(),
                    (k.clone(), v.clone())
                );
                let j = format_json_line(&k, &v);
                assert!(!j.contains('\n'));
                assert_eq!(parse_json_line(&j).unwrap(), (k.clone(), v.clone()));
            }
        }
        assert!(parse_line("no tab").is_err());
        assert!(parse_line("a\tb\tc").is_err());
        assert!(parse_json_line("[1]").is_err());
        assert!(parse_json_line("{\"key\":\"a\"}").is_err());
        assert!(parse_json_line("{\"key\":1,\"value\":\"a\"}").is_err());
    }
}
