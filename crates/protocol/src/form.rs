//! `multipart/form-data` bodies of `POST /v1/models/{name}/classify`: one image per part.
//!
//! The server reads the whole body first (bounded by `--max-body`), so the form is parsed from
//! memory: [`parse`] is synchronous, the same code path for the server and the fuzzer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

/// One part of a form: its file name (or field name, or `file N`), and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormFile {
    pub name: String,
    pub bytes: Bytes,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FormError {
    #[error("bad multipart form: the Content-Type has no usable boundary ({0})")]
    Boundary(String),
    #[error("bad multipart form: {0}")]
    Malformed(String),
    #[error("the form has no files")]
    Empty,
}

/// Whether a `Content-Type` says the body is a multipart form.
pub fn is_form(content_type: &str) -> bool {
    content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
}

/// One part of a form with its field name and file name as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormField {
    pub name: Option<String>,
    pub file_name: Option<String>,
    pub bytes: Bytes,
}

impl FormField {
    /// The part's bytes as text (a form's plain fields), or `None` when they are not UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }
}

/// Parses a whole `multipart/form-data` body into its parts with their field names, in order
/// (an empty form is not an error here).
pub fn parse_fields(content_type: &str, body: Bytes) -> Result<Vec<FormField>, FormError> {
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| FormError::Boundary(e.to_string()))?;
    let stream = futures_util::stream::once(std::future::ready(Ok::<Bytes, Infallible>(body)));
    let mut form = multer::Multipart::new(stream, boundary);
    let mut fields = Vec::new();
    loop {
        let field = complete(form.next_field()).map_err(|e| FormError::Malformed(e.to_string()))?;
        let Some(field) = field else { break };
        let name = field.name().map(str::to_string);
        let file_name = field.file_name().map(str::to_string);
        let bytes = complete(field.bytes()).map_err(|e| FormError::Malformed(e.to_string()))?;
        fields.push(FormField {
            name,
            file_name,
            bytes,
        });
    }
    Ok(fields)
}

/// Parses a whole `multipart/form-data` body into its parts, in order.
pub fn parse(content_type: &str, body: Bytes) -> Result<Vec<FormFile>, FormError> {
    let files: Vec<FormFile> = parse_fields(content_type, body)?
        .into_iter()
        .enumerate()
        .map(|(i, f)| FormFile {
            name: f
                .file_name
                .or(f.name)
                .unwrap_or_else(|| format!("file {i}")),
            bytes: f.bytes,
        })
        .collect();
    if files.is_empty() {
        return Err(FormError::Empty);
    }
    Ok(files)
}

/// Runs a future over an in-memory stream to completion. Nothing it awaits can be pending (the
/// only chunk is there from the start), so one poll settles it; a pending one is reported as a
/// malformed form rather than spun on.
fn complete<T>(future: impl Future<Output = multer::Result<T>>) -> multer::Result<T> {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(multer::Error::IncompleteStream),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "multipart/form-data; boundary=XyZ";

    fn body(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut b = Vec::new();
        for (name, file, data) in parts {
            b.extend_from_slice(b"--XyZ\r\n");
            let disposition = match file {
                Some(f) => {
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n")
                }
                None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
            };
            b.extend_from_slice(disposition.as_bytes());
            b.extend_from_slice(b"\r\n");
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b.into()
    }

    #[test]
    fn parts_come_back_in_order_with_their_names() {
        let files = parse(
            CT,
            body(&[
                ("a", Some("cat.jpg"), b"\xff\xd8cat"),
                ("b", None, b"dog\r\n--not"),
            ]),
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].name, "cat.jpg");
        assert_eq!(&files[0].bytes[..], b"\xff\xd8cat");
        assert_eq!(files[1].name, "b");
        assert_eq!(&files[1].bytes[..], b"dog\r\n--not");
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        let good = body(&[("a", Some("x"), b"1")]);
        let cases: &[(&str, Bytes, &str)] = &[
            ("multipart/form-data", good.clone(), "boundary"),
            (CT, Bytes::from_static(b"--XyZ--\r\n"), "no files"),
            (CT, Bytes::new(), "bad multipart form"),
            (CT, good.slice(..good.len() - 12), "bad multipart form"),
            (
                CT,
                Bytes::from_static(b"--XyZ\r\nno colon here\r\n\r\nx\r\n--XyZ--\r\n"),
                "bad multipart form",
            ),
        ];
        for (ct, b, want) in cases {
            let e = parse(ct, b.clone()).unwrap_err().to_string();
            assert!(e.contains(want), "{ct} {b:?}: {e}");
        }
    }

    #[test]
    fn only_form_content_types_are_forms() {
        assert!(is_form("Multipart/Form-Data; boundary=a"));
        assert!(!is_form("image/jpeg"));
        assert!(!is_form("multipart/mixed; boundary=a"));
    }
}
