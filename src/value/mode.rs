//! `FileMode`: permission bits of a file the daemon creates, written in octal (`0640`).

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// Permission bits (at most `0777`) written as octal text: `0640`, `640` or `0o640`. In
/// YAML `mode: 0640` is that text; a bare number is taken as the value it is (`0o640`
/// is 416, that same mode), so `mode: 640`, which YAML reads as decimal 640, is refused
/// rather than taken for `0640`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl FileMode {
    /// Parses the octal text form.
    pub fn parse(text: &str) -> Result<FileMode, String> {
        let digits = text.trim();
        let digits = digits.strip_prefix("0o").unwrap_or(digits);
        let bits = u32::from_str_radix(digits, 8)
            .ok()
            .filter(|_| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| format!("`{text}` is not a file mode (write it in octal, e.g. 0640)"))?;
        Self::bits(bits, &text)
    }

    /// Checks permission bits: nothing above `0777` (no setuid, setgid or sticky bit).
    fn bits(bits: u32, written: &dyn fmt::Display) -> Result<FileMode, String> {
        if bits > 0o777 {
            return Err(format!(
                "`{written}` is not a file mode: at most 0777, written in octal with a leading zero (e.g. 0640)"
            ));
        }
        Ok(FileMode(bits))
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor, not an untagged enum: untagged enums lose the value's line number.
        struct ModeVisitor;
        impl Visitor<'_> for ModeVisitor {
            type Value = FileMode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file mode in octal, such as 0640")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileMode, E> {
                let bits = u32::try_from(v).unwrap_or(u32::MAX);
                FileMode::bits(bits, &v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileMode, E> {
                let bits = u32::try_from(v).map_err(|_| E::custom(format!("`{v}` is not a file mode")))?;
                FileMode::bits(bits, &v).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
                FileMode::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(ModeVisitor)
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Wrapper {
        mode: FileMode,
    }

    fn read(yaml: &str) -> Result<u32, String> {
        serde_yaml::from_str::<Wrapper>(yaml).map(|w| w.mode.0).map_err(|e| e.to_string())
    }

    #[test]
    fn octal_text_and_exact_numbers_are_modes() {
        assert_eq!(read("mode: 0640"), Ok(0o640));
        assert_eq!(read("mode: '600'"), Ok(0o600));
        assert_eq!(read("mode: \"0o755\""), Ok(0o755));
        assert_eq!(read("mode: 0o640"), Ok(0o640), "YAML's octal number");
        assert_eq!(FileMode(0o640).to_string(), "0640");
    }

    #[test]
    fn decimal_looking_numbers_and_bad_text_are_refused() {
        for (yaml, says) in [
            ("mode: 640", "`640` is not a file mode: at most 0777"),
            ("mode: 04755", "`04755` is not a file mode: at most 0777"),
            ("mode: 0649", "`0649` is not a file mode (write it in octal"),
            ("mode: rw-r-----", "is not a file mode (write it in octal"),
            ("mode: ''", "is not a file mode (write it in octal"),
            ("mode: -1", "`-1` is not a file mode"),
        ] {
            let error = read(yaml).expect_err(yaml);
            assert!(error.contains(says), "{yaml}: {error}");
        }
    }
}
