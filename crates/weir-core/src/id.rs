/// A new identifier for runs and step runs: time-ordered (UUIDv7), so ids
/// sort by creation, and printed as 32 hex characters; users may type any
/// unique prefix.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}
