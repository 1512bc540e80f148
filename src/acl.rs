//! Placeholder until the least-privilege rule lands.

/// The `ACL SETUSER` line for `user` on the queue with `prefix`.
pub fn rule(user: &str, prefix: &str) -> String {
    format!("ACL SETUSER {user} on ~{{{prefix}:*")
}
