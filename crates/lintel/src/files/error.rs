//! What can go wrong with files, said without HTTP (the edge maps each variant in
//! `crate::error`; docs/errors.md lists the codes).

use crate::store::StoreError;
use crate::validation::{FieldErrors, push_field_error};

/// A failed file operation.
#[derive(Debug)]
pub enum FileError {
    /// A file or the whole upload is larger than allowed (413 `file_too_large`), found
    /// while streaming: `limit` bytes.
    TooLarge { field: String, limit: u64 },
    /// Input that fails its checks (400 `validation_failed`).
    Invalid(FieldErrors),
    /// The multipart body could not be read (400 `invalid_body`).
    BadBody(String),
    /// No such file, or not visible to the caller (404).
    NotFound,
    /// A private file asked for by an unidentified caller (401 `file_token_required`).
    NeedsCaller,
    /// A file token that is bad, expired or revoked (401 `invalid_file_token`).
    BadToken,
    /// A thumb size the field does not list (400 `invalid_thumb`).
    BadThumb(String),
    /// The range asked for lies outside the file (416).
    Unsatisfiable { size: u64 },
    /// The caller holds the most unattached uploads it may (409 `too_many_uploads`).
    TooManyUploads,
    /// Another request is appending to the upload now (423 `upload_locked`).
    Locked,
    /// A PATCH whose `Upload-Offset` is not the upload's (409 `offset_mismatch`).
    OffsetMismatch { offset: u64 },
    /// Reading or writing bytes failed.
    Io(String),
    /// The store failed.
    Store(StoreError),
}

impl FileError {
    pub fn field(field: &str, code: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        push_field_error(&mut errors, field, code, message);
        FileError::Invalid(errors)
    }
}

impl From<StoreError> for FileError {
    fn from(e: StoreError) -> Self {
        FileError::Store(e)
    }
}

impl From<std::io::Error> for FileError {
    fn from(e: std::io::Error) -> Self {
        FileError::Io(e.to_string())
    }
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::TooLarge { field, limit } => write!(f, "{field}: over {limit} bytes"),
            FileError::Invalid(e) => write!(f, "invalid: {e:?}"),
            FileError::BadBody(m) => write!(f, "bad multipart body: {m}"),
            FileError::NotFound => write!(f, "not found"),
            FileError::NeedsCaller => write!(f, "a private file needs an identified caller"),
            FileError::BadToken => write!(f, "bad file token"),
            FileError::BadThumb(t) => write!(f, "thumb {t} is not listed"),
            FileError::Unsatisfiable { size } => write!(f, "range outside {size} bytes"),
            FileError::TooManyUploads => write!(f, "too many uploads"),
            FileError::Locked => write!(f, "upload busy"),
            FileError::OffsetMismatch { offset } => write!(f, "the upload is at {offset}"),
            FileError::Io(e) => write!(f, "io: {e}"),
            FileError::Store(e) => write!(f, "{e}"),
        }
    }
}
