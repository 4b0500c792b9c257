//! What the engine knows about PostgreSQL's built-in functions and operators.
//!
//! The lists of built-in names come from PostgreSQL's bootstrap catalog
//! (`pg_proc`, `pg_operator`, plus the SQL-defined functions of
//! `system_functions.sql`/`system_views.sql`). A name that is not built in
//! is somebody's code, whose body the engine cannot see.

use std::collections::HashSet;
use std::sync::OnceLock;

use super::Class;

static FUNCTIONS_TXT: &str = include_str!("builtin_functions.txt");
static FUNCTIONS_ADDED_TXT: &str = include_str!("builtin_functions_added.txt");
static OPERATORS_TXT: &str = include_str!("builtin_operators.txt");

/// The names of the lists, one a line. A comment line starts with `# ` (a
/// hash and a space): names never hold a space, and `#`, `##`, `#>`, `#>>`
/// and `#-` are operators, not comments.
fn set(texts: &[&'static str]) -> HashSet<&'static str> {
    texts.iter().flat_map(|t| t.lines()).map(str::trim).filter(|l| !l.is_empty() && !is_comment(l)).collect()
}

fn is_comment(line: &str) -> bool {
    line.starts_with("# ")
}

/// Whether `name` (lower case, unqualified) is a built-in function.
pub(crate) fn is_builtin_function(name: &str) -> bool {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| set(&[FUNCTIONS_TXT, FUNCTIONS_ADDED_TXT])).contains(name)
}

/// Whether `name` is a built-in operator.
pub(crate) fn is_builtin_operator(name: &str) -> bool {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| set(&[OPERATORS_TXT])).contains(name)
}

/// Whether `t.name`, where `t` is a table with no column `name`, is the
/// call `name(t)` of a built-in function on the whole row (PostgreSQL's
/// attribute notation): the built-ins that take one argument of any row
/// type, as PostgreSQL 15 resolves `SELECT t.name FROM t` (`t.to_json` is
/// the row as JSON, `t.concat` and `t.record_out` as text, `t.array_agg`
/// an aggregate of rows); `t.upper` is only ever a column.
pub(crate) fn is_attribute_function(name: &str) -> bool {
    matches!(
        name,
        "to_json"
            | "to_jsonb"
            | "row_to_json"
            | "json_build_array"
            | "jsonb_build_array"
            | "json_build_object"
            | "jsonb_build_object"
            | "json_agg"
            | "jsonb_agg"
            | "array_agg"
            | "concat"
            | "quote_literal"
            | "quote_nullable"
            | "record_out"
            | "record_send"
            | "hash_record"
            | "hash_record_extended"
            | "count"
            | "num_nulls"
            | "num_nonnulls"
            | "pg_column_size"
            | "pg_column_compression"
            | "pg_typeof"
    )
}

/// What calling a built-in function does, beyond computing a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing the policy cares about.
    None,
    /// Runs SQL given as text, or reads a relation named by a string.
    Opaque,
    /// Changes data (`write` class).
    Write,
    /// Signals the server, touches its files, replication or backups.
    Admin,
    /// A sequence function: `write`, naming its sequence by a string.
    Sequence,
    /// Reads or writes large objects (`pg_catalog.pg_largeobject`).
    LargeObject(Class),
    /// `set_config(name, value, is_local)`: judged by its arguments.
    SetConfig,
    /// Reads a system view's data by another path: counts as reading it.
    Reads(&'static str),
}

/// The effect of a built-in function, by its lower-case name.
pub(crate) fn effect(name: &str) -> Effect {
    match name {
        // Run SQL text or read a relation named by a string.
        "query_to_xml"
        | "query_to_xml_and_xmlschema"
        | "query_to_xmlschema"
        | "table_to_xml"
        | "table_to_xml_and_xmlschema"
        | "table_to_xmlschema"
        | "cursor_to_xml"
        | "cursor_to_xmlschema"
        | "schema_to_xml"
        | "schema_to_xml_and_xmlschema"
        | "schema_to_xmlschema"
        | "database_to_xml"
        | "database_to_xml_and_xmlschema"
        | "database_to_xmlschema"
        | "ts_stat"
        | "ts_rewrite" => Effect::Opaque,
        n if n.starts_with("dblink") => Effect::Opaque,

        "nextval" | "setval" => Effect::Sequence,
        "pg_notify" => Effect::Write,

        "lo_import" | "lo_export" => Effect::Admin,
        "lo_get" | "loread" | "lo_open" | "lo_lseek" | "lo_lseek64" | "lo_tell" | "lo_tell64" | "lo_close" => {
            Effect::LargeObject(Class::Read)
        }
        "lo_create" | "lo_creat" | "lo_unlink" | "lo_put" | "lo_from_bytea" | "lo_truncate" | "lo_truncate64"
        | "lowrite" => Effect::LargeObject(Class::Write),

        "set_config" => Effect::SetConfig,

        // Other sessions' query texts, which may quote anything.
        "pg_stat_get_activity" | "pg_stat_get_backend_activity" => Effect::Reads("pg_catalog.pg_stat_activity"),

        // Server signalling, configuration, files, replication, backups.
        "pg_cancel_backend"
        | "pg_terminate_backend"
        | "pg_reload_conf"
        | "pg_rotate_logfile"
        | "pg_rotate_logfile_old"
        | "pg_promote"
        | "pg_switch_wal"
        | "pg_create_restore_point"
        | "pg_backup_start"
        | "pg_backup_stop"
        | "pg_start_backup"
        | "pg_stop_backup"
        | "pg_wal_replay_pause"
        | "pg_wal_replay_resume"
        | "pg_log_backend_memory_contexts"
        | "pg_read_file"
        | "pg_read_file_old"
        | "pg_read_binary_file"
        | "pg_stat_file"
        | "pg_ls_dir"
        | "pg_file_write"
        | "pg_file_rename"
        | "pg_file_unlink"
        | "pg_file_sync"
        | "pg_logdir_ls"
        | "pg_current_logfile"
        | "pg_import_system_collations"
        | "pg_sync_replication_slots"
        | "pg_logical_emit_message"
        | "pg_replication_slot_advance"
        | "pg_drop_replication_slot"
        | "pg_create_physical_replication_slot"
        | "pg_create_logical_replication_slot"
        | "pg_copy_physical_replication_slot"
        | "pg_copy_logical_replication_slot"
        | "pg_export_snapshot"
        | "pg_stat_reset"
        | "pg_stat_reset_shared"
        | "pg_stat_reset_single_table_counters"
        | "pg_stat_reset_single_function_counters"
        | "pg_stat_reset_slru"
        | "pg_stat_reset_replication_slot"
        | "pg_stat_reset_subscription_stats"
        | "pg_stat_reset_backend_stats"
        | "pg_set_relation_stats"
        | "pg_clear_relation_stats"
        | "pg_restore_relation_stats"
        | "pg_restore_attribute_stats"
        | "pg_set_attribute_stats"
        | "pg_clear_attribute_stats"
        // Index maintenance: changes indexes, as VACUUM does.
        | "brin_summarize_new_values"
        | "brin_summarize_range"
        | "brin_desummarize_range"
        | "gin_clean_pending_list"
        | "binary_upgrade_set_next_pg_type_oid" => Effect::Admin,
        n if n.starts_with("pg_ls_")
            || n.starts_with("pg_logical_slot_")
            || n.starts_with("pg_replication_origin_")
            || n.starts_with("binary_upgrade_") =>
        {
            Effect::Admin
        }
        _ => Effect::None,
    }
}

/// The class of setting a statement or `set_config` changes, by the
/// setting's lower-case name.
pub(crate) fn setting_class(name: &str) -> Class {
    match name {
        // Who the session is.
        "role" | "session_authorization" | "session authorization" => Class::Dcl,
        // How later text is lexed or decoded: the engine parses with the
        // session's settings, so changing them is not an ordinary setting.
        "standard_conforming_strings" | "backslash_quote" | "client_encoding" | "names" => Class::Admin,
        // Server-side behaviour a session should not steer: triggers and
        // rules (replication role), logging and what gets loaded.
        "session_replication_role"
        | "session_preload_libraries"
        | "local_preload_libraries"
        | "dynamic_library_path"
        | "jit_provider"
        | "allow_system_table_mods"
        | "ignore_system_indexes"
        | "zero_damaged_pages" => Class::Admin,
        n if n.starts_with("log_") || n.starts_with("debug_") || n.starts_with("track_") => Class::Admin,
        "transaction_isolation" | "transaction_read_only" | "transaction_deferrable" => Class::Transaction,
        _ => Class::Session,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_loaded() {
        assert!(is_builtin_function("lower"));
        assert!(is_builtin_function("query_to_xml"));
        assert!(!is_builtin_function("leak"));
        assert!(is_builtin_function("system_user"));
        assert!(!is_builtin_function("# Built-in functions added in PostgreSQL 16, 17 and 18 (from their release"));
        assert!(is_builtin_operator("="));
        assert!(is_builtin_operator("||"));
        assert!(!is_builtin_operator("===>"));
    }

    /// Every distinct `oprname` of PostgreSQL's `pg_operator.dat` (the
    /// tinterval operators `#<`, `#=`, ... went with that type in
    /// PostgreSQL 12; multirange operators reuse these names).
    const POSTGRESQL_OPERATORS: &[&str] = &[
        "=", "<>", "<", ">", "<=", ">=", "^@", "||", "%", "@", "-", "<<", "&<", "&>", ">>", "<@", "@>", "~=", "&&",
        ">^", "<^", "@@", "*", "<->", "/", "+", "|/", "||/", "~", "!~", "#", "?#", "@-@", "?-", "?|", "^", "?||",
        "?-|", "##", "&", "|", "<<=", ">>=", "~~", "!~~", "~*", "!~*", "~~*", "!~~*", "~<~", "~<=~", "~>=~", "~>~",
        "<<|", "|>>", "&<|", "|&>", "@@@", "!!", "*=", "*<>", "*<", "*>", "*<=", "*>=", "-|-", "->", "->>", "#>",
        "#>>", "?", "?&", "#-", "@?",
    ];

    #[test]
    fn the_operator_list_is_postgresql_s() {
        for op in ["#", "##", "#>", "#>>", "#-", "?#"] {
            assert!(is_builtin_operator(op), "{op}");
        }
        let loaded = set(&[OPERATORS_TXT]);
        let expected: HashSet<&str> = POSTGRESQL_OPERATORS.iter().copied().collect();
        let mut missing: Vec<_> = expected.difference(&loaded).collect();
        let mut extra: Vec<_> = loaded.difference(&expected).collect();
        missing.sort();
        extra.sort();
        assert!(missing.is_empty() && extra.is_empty(), "missing {missing:?}, not operators {extra:?}");
    }

    #[test]
    fn the_lists_hold_names_only() {
        // A comment read as a name, or a name read as a comment, shows here.
        const OPERATOR_CHARS: &str = "+-*/<>=~!@#%^&|`?";
        for op in set(&[OPERATORS_TXT]) {
            assert!(op.chars().all(|c| OPERATOR_CHARS.contains(c)), "operator {op:?}");
        }
        for f in set(&[FUNCTIONS_TXT, FUNCTIONS_ADDED_TXT]) {
            assert!(f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "function {f:?}");
        }
        let lines = |t: &str| t.lines().filter(|l| !l.trim().is_empty()).count();
        let comments = |t: &str| t.lines().filter(|l| l.starts_with("# ")).count();
        assert_eq!(set(&[OPERATORS_TXT]).len(), lines(OPERATORS_TXT));
        assert_eq!(comments(FUNCTIONS_ADDED_TXT), 4);
    }

    #[test]
    fn effects() {
        assert_eq!(effect("pg_terminate_backend"), Effect::Admin);
        assert_eq!(effect("pg_ls_waldir"), Effect::Admin);
        assert_eq!(effect("brin_summarize_range"), Effect::Admin);
        assert_eq!(effect("gin_clean_pending_list"), Effect::Admin);
        assert_eq!(effect("query_to_xml"), Effect::Opaque);
        assert_eq!(effect("nextval"), Effect::Sequence);
        assert_eq!(effect("lower"), Effect::None);
    }
}
