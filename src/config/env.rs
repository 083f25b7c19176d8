//! `${VAR}` and `${VAR:-default}` expansion of config text, before YAML parsing. A
//! default may itself name variables (`${DATA:-${HOME}/data}`); it is expanded only
//! when it is used.
//!
//! Expansion is textual and keeps every line where it was, so YAML errors still point
//! at the right line. Comments are left alone (a variable named only in a comment is not
//! required). `$${...}` writes a literal `${...}`. Values with a line break are refused:
//! they would shift every line after them; secrets belong in `*_env` or `*_file` keys.

/// One unresolved variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError {
    /// 1-based line of the reference.
    pub line: usize,
    /// 1-based column of the `$`.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// Expands `text` with `lookup`, returning the new text or every unresolved reference.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<EnvError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (index, line) in text.split_inclusive('\n').enumerate() {
        expand_line(line, index + 1, &lookup, &mut out, &mut errors);
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn expand_line(
    line: &str,
    line_no: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
    errors: &mut Vec<EnvError>,
) {
    let bytes = line.as_bytes();
    let mut i = 0;
    let (mut in_single, mut in_double) = (false, false);
    while i < bytes.len() {
        let c = bytes[i];
        // A `#` starts a comment only outside quotes and at the start or after a space,
        // as YAML defines it; the rest of such a line is copied untouched.
        if c == b'#' && !in_single && !in_double && (i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t')
        {
            out.push_str(&line[i..]);
            return;
        }
        match c {
            b'\'' if !in_double => in_single = !in_single,
            b'"' if !in_single && (i == 0 || bytes[i - 1] != b'\\') => in_double = !in_double,
            _ => {}
        }
        if c == b'$' && line[i..].starts_with("$${") {
            out.push('$');
            i += 2; // the `${` that follows is copied below as plain text
            out.push('{');
            i += 1;
            continue;
        }
        if c == b'$' && line[i..].starts_with("${") {
            let Some(end) = closing_brace(&line[i + 2..]) else {
                errors.push(EnvError { line: line_no, column: i + 1, message: "unclosed `${`".into() });
                out.push_str(&line[i..]);
                return;
            };
            let inner = &line[i + 2..i + 2 + end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                errors.push(EnvError {
                    line: line_no,
                    column: i + 1,
                    message: format!(
                        "`${{{inner}}}` is not a variable reference (use ${{NAME}} or ${{NAME:-default}})"
                    ),
                });
            } else {
                match lookup(name).filter(|v| !(v.is_empty() && default.is_some())).or(default.map(str::to_string)) {
                    Some(value) if value.contains('\n') || value.contains('\r') => errors.push(EnvError {
                        line: line_no,
                        column: i + 1,
                        message: format!("environment variable {name} holds a line break, which a config value cannot take"),
                    }),
                    Some(value) if lookup(name).is_none_or(|v| v.is_empty()) => {
                        // The default was taken: expand the variables it names.
                        let before = errors.len();
                        let mut expanded = String::new();
                        expand_line(&value, line_no, lookup, &mut expanded, errors);
                        for error in &mut errors[before..] {
                            error.column = i + 1;
                        }
                        out.push_str(&expanded);
                    }
                    Some(value) => out.push_str(&value),
                    None => errors.push(EnvError {
                        line: line_no,
                        column: i + 1,
                        message: format!("environment variable {name} is not set (write ${{{name}:-default}} to give a default)"),
                    }),
                }
            }
            i += 2 + end + 1;
            continue;
        }
        let ch_len = line[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&line[i..i + ch_len]);
        i += ch_len;
    }
}

/// The index of the `}` that closes a `${` whose body starts `body`, counting the
/// `${…}` nested in a default.
fn closing_brace(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/x".into()),
            "EMPTY" => Some(String::new()),
            "MULTI" => Some("a\nb".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        let text = "path: ${HOME_DIR}/in\nn: ${NOPE:-5}\ne: ${EMPTY:-d}\n";
        assert_eq!(expand(text, env).unwrap(), "path: /home/x/in\nn: 5\ne: d\n");
    }

    #[test]
    fn reports_every_missing_variable_with_its_place() {
        let errors = expand("a: ${ONE}\nb: x ${TWO}\n", env).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!((errors[0].line, errors[0].column), (1, 4));
        assert_eq!(
            errors[1].message,
            "environment variable TWO is not set (write ${TWO:-default} to give a default)"
        );
        assert_eq!((errors[1].line, errors[1].column), (2, 6));
    }

    #[test]
    fn leaves_comments_and_escapes_alone() {
        let text = "a: 1 # uses ${NOT_NEEDED}\n# ${ALSO}\nb: \"#${HOME_DIR}\"\nc: $${LITERAL}\n";
        assert_eq!(
            expand(text, env).unwrap(),
            "a: 1 # uses ${NOT_NEEDED}\n# ${ALSO}\nb: \"#/home/x\"\nc: ${LITERAL}\n"
        );
    }

    #[test]
    fn defaults_may_name_variables_and_are_expanded_only_when_taken() {
        assert_eq!(expand("a: ${NOPE:-${HOME_DIR}/data}\n", env).unwrap(), "a: /home/x/data\n");
        assert_eq!(expand("a: ${HOME_DIR:-${NOPE}}\n", env).unwrap(), "a: /home/x\n");
        assert_eq!(expand("a: ${NOPE:-${EMPTY:-${HOME_DIR}}}!\n", env).unwrap(), "a: /home/x!\n");
        let errors = expand("a: ${NOPE:-${ALSO_NOPE}}\n", env).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("ALSO_NOPE"), "{errors:?}");
        assert_eq!((errors[0].line, errors[0].column), (1, 4));
        assert!(expand("a: ${NOPE:-${MULTI}}\n", env).unwrap_err()[0].message.contains("line break"));
    }

    #[test]
    fn refuses_line_breaks_and_bad_references() {
        assert!(expand("a: ${MULTI}\n", env).unwrap_err()[0].message.contains("line break"));
        assert!(expand("a: ${A B}\n", env).unwrap_err()[0].message.contains("not a variable reference"));
        assert!(expand("a: ${OPEN\n", env).unwrap_err()[0].message.contains("unclosed"));
    }
}
