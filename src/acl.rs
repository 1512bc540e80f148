//! Least privilege in Redis: the one `ACL SETUSER` rule that lets a user run
//! every sms-alerts subcommand on one queue prefix, and nothing else.
//!
//! The rule names each command (no categories: a category grows with every
//! Redis release), and keys by the prefix's hash tag: our keys look like
//! `{sms:0}:messages`, so the pattern is `~{sms:*` (`~{sms:*}` would match
//! none of them). `FCALL` checks the keys a Function declares and every
//! command the Function runs against the user too, so the commands of
//! `migrations/functions.lua` are granted as well. The rule carries no
//! password: the operator appends `>password`, so it never sits in a file
//! or a terminal's scroll-back with the rule.
//!
//! `SCAN` (used by `repair` to find the queue's keys) is not limited by key
//! patterns: it lists key names of the whole database, not their values.

/// Every command sms-alerts runs on a queue, as ACL names (`command` or
/// `container|subcommand`), each listed once, under the first of its users.
pub const COMMANDS: &[&str] = &[
    // Every connection: deadpool checks a pooled connection with UNWATCH and
    // PING before reusing it; a URL with a database number SELECTs it. (AUTH
    // needs no permission; CLIENT SETINFO is not sent.)
    "ping",
    "unwatch",
    "select",
    // Every process: whether Redis is a cluster node (INFO, below) and, on a
    // cluster, which primary serves which slot.
    "cluster|slots",
    // migrate: load the Functions library, record the migrations applied.
    "function|load",
    "hsetnx",
    // Every subcommand: the Functions library (version check included).
    "fcall",
    "fcall_ro",
    // Inside the Functions (migrations/functions.lua): FCALL checks these
    // against the user too.
    "del",
    "exists",
    "get",
    "set",
    "hexists",
    "hget",
    "hgetall",
    "hincrby",
    "hlen",
    "hmget",
    "hset",
    "pexpire",
    "pttl",
    "sadd",
    "srem",
    "time",
    "type",
    "xack",
    "xadd",
    "xclaim",
    "xdel",
    "xgroup|create",
    "xgroup|delconsumer",
    "xinfo|stream",
    "xinfo|groups",
    "xinfo|consumers",
    "xlen",
    "xpending",
    "xrange",
    "xtrim",
    "zadd",
    "zremrangebyscore",
    // send: the group reads, on our own connection.
    "xreadgroup",
    // produce: each batch is a MULTI/EXEC fenced by WATCH, or DISCARDed when
    // it is already written.
    "watch",
    "multi",
    "exec",
    "discard",
    // produce and serve on a cluster primary with replicas: a write counts
    // once a replica confirms it.
    "wait",
    // monitor (INFO memory), audit, senders, runs, dead list: reads.
    "info",
    "xrevrange",
    "hkeys",
    "smembers",
    "zrange",
    "zcard",
    // repair: finds the queue's keys, renames damaged ones aside, re-creates
    // counters and the group in one MULTI/EXEC.
    "scan",
    "rename",
    "hdel",
];

/// The `ACL SETUSER` line (without `ACL SETUSER` and without a password) for
/// `user` on queue `prefix`: `user on resetkeys resetchannels ~{prefix:*
/// -@all +cmd …`. Run it as `ACL SETUSER <rule> >password`.
///
/// `user` and `prefix` must hold no whitespace (a prefix the settings accept
/// never does); glob characters in `prefix` are escaped, so they match only
/// themselves.
pub fn rule(user: &str, prefix: &str) -> String {
    let mut rule = format!(
        "{user} on resetkeys resetchannels ~{{{}:* -@all",
        escape_glob(prefix)
    );
    for command in COMMANDS {
        rule.push_str(" +");
        rule.push_str(command);
    }
    rule
}

fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commands that take a subcommand, granted one subcommand at a time.
    const CONTAINERS: &[&str] = &[
        "xgroup", "xinfo", "function", "client", "config", "object", "cluster",
    ];

    /// Every `redis.call` / `redis.pcall` in `lua` whose command is a
    /// literal, as an ACL name (a call built at run time, like
    /// `redis.call(unpack(query))`, is left to the integration test).
    fn lua_commands(lua: &str) -> Vec<String> {
        let mut found = Vec::new();
        for call in ["redis.call(", "redis.pcall("] {
            for (at, _) in lua.match_indices(call) {
                let rest = &lua[at + call.len()..];
                let args = rest.split(')').next().unwrap_or_default();
                let mut args = args.split(',').map(str::trim);
                let Some(name) = args.next().and_then(literal) else {
                    continue;
                };
                let name = name.to_lowercase();
                match args.next().and_then(literal) {
                    Some(sub) if CONTAINERS.contains(&name.as_str()) => {
                        found.push(format!("{name}|{}", sub.to_lowercase()));
                    }
                    _ => found.push(name),
                }
            }
        }
        found
    }

    /// The text of a quoted Lua string literal.
    fn literal(arg: &str) -> Option<&str> {
        arg.strip_prefix('\'')
            .and_then(|a| a.strip_suffix('\''))
            .or_else(|| arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')))
    }

    #[test]
    fn the_rule_has_its_shape() {
        let rule = rule("sms-app", "sms");
        assert!(
            rule.starts_with("sms-app on resetkeys resetchannels ~{sms:* -@all +ping "),
            "{rule}"
        );
        assert!(!rule.contains('>') && !rule.contains("nopass"), "{rule}");
        assert!(rule.contains(" +fcall +fcall_ro "), "{rule}");
        assert!(rule.contains(" +xgroup|create "), "{rule}");
        assert!(!rule.contains("@all +@") && !rule.contains(" +@"), "{rule}");
        let words: Vec<&str> = rule.split(' ').collect();
        assert_eq!(words.len(), 6 + COMMANDS.len(), "{rule}");
        let odd = super::rule("u", "a*b");
        assert!(odd.contains(" ~{a\\*b:* "), "{odd}");
    }

    #[test]
    fn commands_are_listed_once() {
        let mut sorted = COMMANDS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), COMMANDS.len(), "a command is listed twice");
        for command in COMMANDS {
            assert_eq!(*command, command.to_lowercase(), "{command}");
        }
    }

    #[test]
    fn every_command_the_functions_run_is_granted() {
        let lua = include_str!("../migrations/functions.lua");
        let used = lua_commands(lua);
        assert!(used.len() > 20, "found only {used:?}");
        for command in used {
            assert!(
                COMMANDS.contains(&command.as_str()),
                "migrations/functions.lua runs {command}, which acl::COMMANDS does not grant"
            );
        }
    }
}
