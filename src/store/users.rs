//! The sign-in directory (DESIGN.md "Sign-in methods"): users, their enrolled methods,
//! verifications by user with their attempts, and hosted prompts, behind a trait of their own
//! so each store backend implements it beside [`Store`](super::Store).
//!
//! Every method is one atomic operation; the checks that need secrets (the TOTP code, the
//! sealing key) happen above, and the store only records what they decided, guarded so that
//! two racing requests cannot both win (a code step is accepted once; a prompt token is
//! exchanged once).

use async_trait::async_trait;

use super::{Created, IdempotencyKey, StoreError, UnixMs, Verification, VerificationId};
use crate::user::{
    Method, MethodId, MethodKind, MethodPatch, NewMethod, NewPrompt, NewUser, NewUserVerification,
    Prompt, SealedSecret, User, UserId,
};
use flow::CallResult;

/// What [`Directory::confirm_code`] did.
#[derive(Clone, Debug)]
pub enum CodeConfirmed {
    /// The step was fresh: the verification is completed `confirmed`.
    Confirmed(Box<Verification>),
    /// This step (or a later one) was already accepted for this method: refused.
    Replayed,
    /// The verification is not waiting for a code of this method (completed, or switched).
    NotAwaiting,
}

/// What [`Directory::reject_code`] did.
#[derive(Clone, Debug)]
pub struct CodeRejected {
    /// The verification after the wrong code (completed `wrong_digits` when it was the last
    /// allowed one). `None`: it was not waiting for a code of this method.
    pub verification: Option<Verification>,
    /// Set when this failure locked the method.
    pub locked_until: Option<UnixMs>,
}

/// What [`Directory::switch_method`] did.
#[derive(Clone, Debug)]
pub enum Switched {
    /// The current attempt ended (`cancelled`) and the next one began. `was_in_call`: a
    /// call was up or being placed and must be hung up.
    Switched {
        verification: Verification,
        was_in_call: bool,
    },
    /// Already completed: nothing changed.
    Completed(Verification),
    /// No such verification for this client, or not a verification by user.
    NotFound,
}

/// What [`Directory::open_prompt`] did with a prompt token.
#[derive(Clone, Debug)]
pub enum PromptOpened {
    /// The token was fresh: it is now used, and the session is bound to the verification.
    Opened(Prompt),
    /// Opened before: a link works once.
    AlreadyUsed,
    /// Older than `signin.link_ttl_secs`.
    Expired,
    /// No such token.
    Unknown,
}

/// A verification by user waiting for its user (for the sweeper).
#[derive(Clone, Debug)]
pub struct Awaiting {
    pub id: VerificationId,
    pub kind: MethodKind,
    pub created_at: UnixMs,
}

/// Users, methods, verifications by user and hosted prompts.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// Stores a user. `None`: the client already has a user with this `external_id`.
    async fn create_user(&self, new: NewUser) -> Result<Option<User>, StoreError>;

    /// One of the client's users.
    async fn user(&self, client: &str, id: &UserId) -> Result<Option<User>, StoreError>;

    /// The client's user with this `external_id`.
    async fn user_by_external_id(
        &self,
        client: &str,
        external_id: &str,
    ) -> Result<Option<User>, StoreError>;

    /// Deletes one of the client's users with its methods (its verifications stay, as
    /// history). `false`: no such user.
    async fn delete_user(&self, client: &str, id: &UserId) -> Result<bool, StoreError>;

    /// Appends a method after the user's others. `None`: the user already has `max` methods.
    async fn add_method(&self, new: NewMethod, max: u32) -> Result<Option<Method>, StoreError>;

    /// The user's methods in the user's order.
    async fn methods(&self, user: &UserId) -> Result<Vec<Method>, StoreError>;

    /// One of the user's methods.
    async fn method(&self, user: &UserId, id: &MethodId) -> Result<Option<Method>, StoreError>;

    /// Renames and/or moves a method (the others keep their relative order).
    async fn update_method(
        &self,
        user: &UserId,
        id: &MethodId,
        patch: MethodPatch,
    ) -> Result<Option<Method>, StoreError>;

    /// Removes a method. `false`: no such method.
    async fn delete_method(&self, user: &UserId, id: &MethodId) -> Result<bool, StoreError>;

    /// Finishes an enrolment: a *pending* method turns active, `step` being the code that
    /// proved it (never accepted again). `None`: not pending (already active, or gone).
    async fn activate_method(
        &self,
        user: &UserId,
        id: &MethodId,
        step: u64,
        now: UnixMs,
    ) -> Result<Option<Method>, StoreError>;

    /// Counts a wrong code against a method (enrolment or sign-in) and locks it for `lock_ms`
    /// once `lock_after` failures in a row are reached. Returns the lock, if it locked now.
    async fn record_code_failure(
        &self,
        id: &MethodId,
        now: UnixMs,
        lock_after: u32,
        lock_ms: i64,
    ) -> Result<Option<UnixMs>, StoreError>;

    /// One sealed secret, to check at startup that the configured key is the one used.
    async fn sealed_secret_sample(&self) -> Result<Option<(MethodId, SealedSecret)>, StoreError>;

    /// Stores a verification by user: `queued` for a phone method (the dialer calls it),
    /// `awaiting_user` otherwise; the idempotency key as in [`super::Store::create`].
    async fn create_user_verification(
        &self,
        new: NewUserVerification,
        idempotency: Option<IdempotencyKey>,
        quotas: &[super::Quota],
    ) -> Result<Created, StoreError>;

    /// A right code at `step` for the verification's current app-code method: accepted once
    /// (the step must be later than any accepted before for the method), the method's failures
    /// reset, the verification completed `confirmed` with its webhook queued.
    async fn confirm_code(
        &self,
        id: &VerificationId,
        method: &MethodId,
        step: u64,
        now: UnixMs,
    ) -> Result<CodeConfirmed, StoreError>;

    /// A wrong code for the verification's current app-code method: counted in the attempt
    /// (the verification completes `wrong_digits` at `max_wrong`) and against the method
    /// (see [`Directory::record_code_failure`]).
    async fn reject_code(
        &self,
        id: &VerificationId,
        method: &MethodId,
        now: UnixMs,
        max_wrong: u32,
        lock_after: u32,
        lock_ms: i64,
    ) -> Result<CodeRejected, StoreError>;

    /// Ends the current attempt (`cancelled`, a call's timeline kept in it) and makes `to`
    /// the current method. An app-code attempt waits for its user at once; a phone attempt
    /// waits (`awaiting_user`) until [`Directory::start_phone_attempt`] queues it, once no
    /// call of this verification is up any more.
    async fn switch_method(
        &self,
        id: &VerificationId,
        client: &str,
        to: &Method,
        now: UnixMs,
    ) -> Result<Switched, StoreError>;

    /// Queues the call of a verification whose current method is a phone and that waits
    /// (after a switch). `None`: not in that state. A method deleted meanwhile completes the
    /// verification as `failed`.
    async fn start_phone_attempt(
        &self,
        id: &VerificationId,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError>;

    /// Verifications waiting for their user (oldest first, at most `limit`).
    async fn awaiting(&self, limit: u32) -> Result<Vec<Awaiting>, StoreError>;

    /// Completes a verification that waits for its user (`expired`, `cancelled`), closing
    /// its attempt and queueing its webhook. `None`: it was not waiting.
    async fn complete_awaiting(
        &self,
        id: &VerificationId,
        result: CallResult,
        now: UnixMs,
    ) -> Result<Option<Verification>, StoreError>;

    /// Stores the hosted prompt of a verification (its token as a hash).
    async fn create_prompt(&self, new: NewPrompt) -> Result<(), StoreError>;

    /// Exchanges a prompt token for a session, once.
    async fn open_prompt(
        &self,
        token_hash: [u8; 32],
        session_hash: [u8; 32],
        csrf_hash: [u8; 32],
        now: UnixMs,
        session_expires_at: UnixMs,
    ) -> Result<PromptOpened, StoreError>;

    /// The prompt of a verification, if `session_hash` is its live session.
    async fn prompt_session(
        &self,
        id: &VerificationId,
        session_hash: [u8; 32],
        now: UnixMs,
    ) -> Result<Option<Prompt>, StoreError>;
}
