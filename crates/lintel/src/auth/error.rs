//! What can go wrong in identity operations, said without HTTP: the edge maps each
//! variant to its problem (`crate::error`), and docs/errors.md lists the codes.

use crate::auth::password::PasswordError;
use crate::records::error::RecordError;
use crate::store::StoreError;
use crate::validation::FieldErrors;

/// An identity operation's failure.
#[derive(Debug)]
pub enum AuthError {
    /// The store's answer (not found, busy, a bug...).
    Store(StoreError),
    /// A record operation on an account failed.
    Record(RecordError),
    /// A password check or hash failed (locked out, hashing).
    Password(PasswordError),
    /// One field of the input is wrong (400 `validation_failed`).
    Field {
        field: &'static str,
        code: &'static str,
        message: String,
    },
    /// Several fields are wrong (400 `validation_failed`).
    Invalid(FieldErrors),
    /// An API key tried to manage the account itself (403 `api_key_not_allowed`).
    ApiKeyNotAllowed,
    /// The route needs a signed-in account (401).
    SignInRequired,
    /// A wrong email or password, said the same way for both (401).
    InvalidCredentials,
    /// Too many failed sign-ins for the account or the address (429, `Retry-After`).
    Locked { retry_after: u64 },
    /// The account has a second factor and no code was given (401 `mfa_required`).
    MfaRequired,
    /// A wrong or used second-factor code (401 `invalid_mfa`).
    InvalidMfa,
    /// Second factors are for signed-in accounts, not keys or the admin token (403).
    FactorNeedsAccount,
    /// No SMTP server is configured, so mail flows are off (409).
    MailNotConfigured,
    /// The account changed at the same time (409 `conflict`), with what to do.
    Concurrent(&'static str),
    /// No identity provider of that name (404).
    UnknownProvider(String),
    /// The identity provider failed or answered unusably (502); logged.
    IdentityProvider,
    /// The single sign-on answer is refused (400 `oidc_failed`), with why.
    OidcFailed(String),
    /// No account has the email and sign-up is closed (403 `signup_closed`).
    SignupClosed,
    /// A bug (500, logged).
    Internal(String),
}

impl AuthError {
    pub fn field(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        AuthError::Field {
            field,
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        AuthError::Store(e)
    }
}

impl From<RecordError> for AuthError {
    fn from(e: RecordError) -> Self {
        AuthError::Record(e)
    }
}

impl From<PasswordError> for AuthError {
    fn from(e: PasswordError) -> Self {
        AuthError::Password(e)
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Store(e) => write!(f, "store: {e}"),
            AuthError::Record(e) => write!(f, "record: {e:?}"),
            AuthError::Password(e) => write!(f, "password: {e}"),
            AuthError::Field { field, message, .. } => write!(f, "{field}: {message}"),
            AuthError::Invalid(errors) => write!(f, "invalid: {errors:?}"),
            AuthError::Internal(msg) => f.write_str(msg),
            other => write!(f, "{other:?}"),
        }
    }
}
