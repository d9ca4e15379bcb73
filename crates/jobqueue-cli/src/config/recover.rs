//! Reading a TOML document into a serde type while collecting *every* error,
//! each with its place.
//!
//! serde stops at the first error. To find the next one, the value that
//! caused it (the deepest key, array element or table whose place holds the
//! error) is cut out of the parsed document and the document is read again,
//! until it reads cleanly. Each cut is remembered, so that consequences of
//! a cut are not reported as errors of their own: a "missing field" for a key
//! that was cut because its value was wrong, or a check across a table's
//! values after one of them was cut (see [`Damage::touches`]).

use std::collections::HashSet;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

/// An error at a place of the file (a byte range of its text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Located {
    pub(crate) span: Range<usize>,
    pub(crate) message: String,
}

/// What was cut out of the document to read past errors.
#[derive(Debug, Default)]
pub(crate) struct Damage {
    /// The places of every table or array that lost a value, and of the
    /// values cut.
    touched: HashSet<(usize, usize)>,
    /// (place of a table, key) of every key cut from a table.
    cut_keys: HashSet<(usize, usize, String)>,
}

impl Damage {
    /// Whether the table or array at `span` lost anything (itself or below),
    /// so that checks across its values would see a partial picture.
    pub(crate) fn touches(&self, span: &Range<usize>) -> bool {
        self.touched.contains(&(span.start, span.end))
    }

    /// Whether `key` was cut from the table at `table` (for its own error:
    /// its absence is not a second one).
    pub(crate) fn cut(&self, table: &Range<usize>, key: &str) -> bool {
        self.cut_keys
            .contains(&(table.start, table.end, key.to_owned()))
    }
}

/// The outcome of [`read_all`].
#[derive(Debug)]
pub(crate) struct ReadAll<T> {
    /// The value read from what was left after the cuts; `None` when even
    /// that could not be read.
    pub(crate) value: Option<T>,
    pub(crate) errors: Vec<Located>,
    pub(crate) damage: Damage,
}

/// One step from a table or array to a value inside it.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

/// The deepest value at an error's place.
#[derive(Debug)]
struct Hit {
    path: Vec<Step>,
    /// Places of the tables and arrays that hold the value, outermost first.
    ancestors: Vec<Range<usize>>,
    /// The place of the value itself.
    span: Range<usize>,
}

/// Whether `pos` lies in `span` (an empty span holds its start).
fn covers(span: &Range<usize>, pos: usize) -> bool {
    span.start <= pos && (pos < span.end || span.start == span.end)
}

/// How many times a document is read at most: each round cuts one value,
/// so this bounds a file with that many errors (far beyond any real one).
const MAX_ROUNDS: usize = 1000;

/// Reads `text` as `T`, collecting every syntax error, or else every error
/// of reading (see the module doc), in the order of the text.
pub(crate) fn read_all<T: DeserializeOwned>(text: &str) -> ReadAll<T> {
    let (mut root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        // After a syntax error the parsed tree is a guess; reading it would
        // report errors that are not in the file.
        let errors = syntax
            .into_iter()
            .map(|e| Located {
                span: e.span().unwrap_or(0..0),
                message: e.message().trim().to_owned(),
            })
            .collect();
        return ReadAll {
            value: None,
            errors,
            damage: Damage::default(),
        };
    }
    let root_span = root.span();
    let mut errors = Vec::new();
    let mut damage = Damage::default();
    for _ in 0..MAX_ROUNDS {
        let attempt = T::deserialize(toml::de::Deserializer::from(root.clone()));
        let err = match attempt {
            Ok(value) => {
                errors.sort_by_key(|e: &Located| e.span.start);
                return ReadAll {
                    value: Some(value),
                    errors,
                    damage,
                };
            }
            Err(e) => e,
        };
        let message = err.message().trim().to_owned();
        let Some(span) = err.span() else {
            errors.push(Located {
                span: 0..0,
                message,
            });
            break;
        };
        let mut best = None;
        find(
            root.get_ref(),
            span.start,
            &mut Vec::new(),
            &mut vec![root_span.clone()],
            &mut best,
        );
        let suppressed = missing_field(&message).is_some_and(|field| damage.cut(&span, field));
        if !suppressed {
            errors.push(Located {
                span: span.clone(),
                message,
            });
        }
        let Some(hit) = best else { break };
        for a in &hit.ancestors {
            damage.touched.insert((a.start, a.end));
        }
        damage.touched.insert((hit.span.start, hit.span.end));
        if let (Some(Step::Key(key)), Some(parent)) = (hit.path.last(), hit.ancestors.last()) {
            damage
                .cut_keys
                .insert((parent.start, parent.end, key.clone()));
        }
        if !cut(root.get_mut(), &hit.path) {
            break;
        }
    }
    errors.sort_by_key(|e| e.span.start);
    ReadAll {
        value: None,
        errors,
        damage,
    }
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// Finds the deepest key, element or table whose place covers `pos`.
fn find(
    table: &DeTable<'_>,
    pos: usize,
    path: &mut Vec<Step>,
    ancestors: &mut Vec<Range<usize>>,
    best: &mut Option<Hit>,
) {
    for (key, value) in table.iter() {
        path.push(Step::Key(key.get_ref().to_string()));
        consider(key.span(), value, pos, path, ancestors, best);
        path.pop();
    }
}

fn find_in_array(
    array: &DeArray<'_>,
    pos: usize,
    path: &mut Vec<Step>,
    ancestors: &mut Vec<Range<usize>>,
    best: &mut Option<Hit>,
) {
    for (i, value) in array.iter().enumerate() {
        path.push(Step::Index(i));
        consider(value.span(), value, pos, path, ancestors, best);
        path.pop();
    }
}

/// Records `value` (reached by `path`, named at `name_span`) if it is at
/// `pos` and deeper than the best so far, then looks inside it: a table's
/// place is only its header, so its keys are searched whether or not the
/// header covers `pos`.
fn consider(
    name_span: Range<usize>,
    value: &Spanned<DeValue<'_>>,
    pos: usize,
    path: &mut Vec<Step>,
    ancestors: &mut Vec<Range<usize>>,
    best: &mut Option<Hit>,
) {
    let here = covers(&name_span, pos) || covers(&value.span(), pos);
    if here && best.as_ref().is_none_or(|b| path.len() > b.path.len()) {
        *best = Some(Hit {
            path: path.clone(),
            ancestors: ancestors.clone(),
            span: value.span(),
        });
    }
    ancestors.push(value.span());
    match value.get_ref() {
        DeValue::Table(t) => find(t, pos, path, ancestors, best),
        DeValue::Array(a) => find_in_array(a, pos, path, ancestors, best),
        _ => {}
    }
    ancestors.pop();
}

/// Removes the value at `path` from `table`; false if there is none.
fn cut(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    match path {
        [Step::Key(k)] => table.remove(k.as_str()).is_some(),
        [Step::Key(k), rest @ ..] => table
            .get_mut(k.as_str())
            .is_some_and(|v| cut_in(v.get_mut(), rest)),
        _ => false,
    }
}

/// Removes the value at `path` from inside `value`.
fn cut_in(value: &mut DeValue<'_>, path: &[Step]) -> bool {
    match (value, path) {
        (DeValue::Table(t), _) => cut(t, path),
        (DeValue::Array(a), [Step::Index(i)]) if *i < a.len() => {
            let kept: DeArray<'_> = std::mem::replace(a, DeArray::new())
                .into_iter()
                .enumerate()
                .filter(|(j, _)| j != i)
                .map(|(_, v)| v)
                .collect();
            *a = kept;
            true
        }
        (DeValue::Array(a), [Step::Index(i), rest @ ..]) => {
            a.get_mut(*i).is_some_and(|v| cut_in(v.get_mut(), rest))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "the fields are read only to be checked")]
    struct Doc {
        a: Option<u32>,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "the fields are read only to be checked")]
    struct Item {
        name: String,
        n: Option<u32>,
    }

    fn messages(text: &str) -> Vec<String> {
        read_all::<Doc>(text)
            .errors
            .into_iter()
            .map(|e| format!("{}: {}", &text[e.span], e.message))
            .collect()
    }

    #[test]
    fn every_error_once_without_follow_ups() {
        let text = "a = \"x\"\nb = 1\n[[items]]\nname = 5\nn = 2\nc = 3\n[[items]]\nname = \"ok\"\nn = -1\n";
        assert_eq!(
            messages(text),
            [
                "\"x\": invalid type: string \"x\", expected u32",
                "b: unknown field `b`, expected `a` or `items`",
                "5: invalid type: integer `5`, expected a string",
                "c: unknown field `c`, expected `name` or `n`",
                "-1: invalid value: integer `-1`, expected u32",
            ]
        );
    }

    #[test]
    fn a_missing_field_is_reported_at_its_table() {
        let text = "[[items]]\nn = 1\n";
        assert_eq!(messages(text), ["[[items]]: missing field `name`"]);
    }

    #[test]
    fn syntax_errors_stop_before_reading() {
        let r = read_all::<Doc>("a = \nb = [\n");
        assert!(r.value.is_none());
        assert!(!r.errors.is_empty());
    }

    #[test]
    fn a_clean_document_reads() {
        let r = read_all::<Doc>("a = 1\n[[items]]\nname = \"x\"\n");
        assert!(r.errors.is_empty());
        assert!(r.value.is_some());
    }
}
