//! The MySQL protocol's numbers, named: capability and status flags, packet markers, command
//! codes, server error codes and SQL states. Everything that reads or writes the wire uses these
//! names, so a reader never has to remember what `0xFE` means in which position.

/// Capability flags (`CLIENT_*`).
pub mod caps {
    /// `CLIENT_LONG_PASSWORD` in MySQL, `CLIENT_MYSQL` in MariaDB (clear: MariaDB's extended
    /// capabilities follow in the greeting).
    pub const MYSQL: u32 = 1;
    /// Database name in the handshake response.
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    /// zlib compression of the whole stream.
    pub const COMPRESS: u32 = 1 << 5;
    /// `LOAD DATA LOCAL INFILE`.
    pub const LOCAL_FILES: u32 = 1 << 7;
    /// The 4.1 protocol (every supported client).
    pub const PROTOCOL_41: u32 = 1 << 9;
    /// TLS upgrade.
    pub const SSL: u32 = 1 << 11;
    /// Length-prefixed auth response.
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    /// Several statements per `COM_QUERY`.
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    /// Several result sets per command.
    pub const MULTI_RESULTS: u32 = 1 << 17;
    /// Multiple results from prepared statements.
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    /// Pluggable authentication.
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    /// Connection attributes in the handshake response.
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    /// Length-encoded auth response.
    pub const PLUGIN_AUTH_LENENC: u32 = 1 << 21;
    /// Session-state tracking in OK packets.
    pub const SESSION_TRACK: u32 = 1 << 23;
    /// OK packets replace EOF packets.
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    /// MySQL 8 optional result-set metadata.
    pub const OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    /// MySQL 8 zstd compression.
    pub const ZSTD: u32 = 1 << 26;
    /// MySQL 8 query attributes.
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;

    /// Bits a proxy removes from the greeting and from the client's response: features whose
    /// wire format it does not follow, and TLS, which each side of the proxy negotiates on its
    /// own (offered to clients only when `proxy.tls` is set).
    pub const HIDDEN: u32 = SSL | COMPRESS | OPTIONAL_RESULTSET_METADATA | ZSTD | QUERY_ATTRIBUTES;
}

/// Server status flags (`SERVER_STATUS_*`), in OK and EOF packets.
pub mod status {
    /// A transaction is open.
    pub const IN_TRANS: u16 = 0x0001;
    /// Autocommit is on.
    pub const AUTOCOMMIT: u16 = 0x0002;
    /// Another result set follows.
    pub const MORE_RESULTS: u16 = 0x0008;
    /// A cursor was opened by `COM_STMT_EXECUTE`.
    pub const CURSOR_EXISTS: u16 = 0x0040;
    /// The cursor's last row was sent.
    pub const LAST_ROW_SENT: u16 = 0x0080;
    /// A read-only transaction is open.
    pub const IN_TRANS_READONLY: u16 = 0x2000;
    /// The OK packet carries session-state information (`CLIENT_SESSION_TRACK`); in an EOF
    /// packet, that some is waiting for the next OK.
    pub const SESSION_STATE_CHANGED: u16 = 0x4000;
}

/// Kinds of entries in an OK packet's session-state information (`SESSION_TRACK_*`).
pub mod track {
    /// A system variable and its new value.
    pub const SYSTEM_VARIABLES: u8 = 0;
    /// The new current schema.
    pub const SCHEMA: u8 = 1;
    /// Some session state changed (`session_track_state_change`).
    pub const STATE_CHANGE: u8 = 2;
    /// GTIDs.
    pub const GTIDS: u8 = 3;
    /// Transaction characteristics, as SQL.
    pub const TRANSACTION_CHARACTERISTICS: u8 = 4;
    /// Transaction state: eight characters, the first `T` (explicit) or `I` (implicit) while a
    /// transaction is open.
    pub const TRANSACTION_STATE: u8 = 5;
}

/// First payload bytes that say what a packet is.
pub mod marker {
    /// OK packet.
    pub const OK: u8 = 0x00;
    /// EOF packet (and, under `CLIENT_DEPRECATE_EOF`, the OK that ends a result set).
    pub const EOF: u8 = 0xFE;
    /// ERR packet.
    pub const ERR: u8 = 0xFF;
    /// `LOAD DATA LOCAL INFILE` request: the client sends the file next.
    pub const LOCAL_INFILE: u8 = 0xFB;
    /// Auth switch request, during a login (same byte as EOF).
    pub const AUTH_SWITCH: u8 = 0xFE;
    /// Extra auth data from the server's plugin, during a login.
    pub const AUTH_MORE_DATA: u8 = 0x01;
    /// Protocol version byte of a v10 greeting.
    pub const PROTOCOL_V10: u8 = 10;
    /// Starts the SQL state inside an ERR packet.
    pub const SQL_STATE: u8 = b'#';
}

/// Command bytes (`COM_*`), the first payload byte of a client command.
pub mod cmd {
    /// Internal server state; never sent by a client.
    pub const SLEEP: u8 = 0x00;
    /// Close the session.
    pub const QUIT: u8 = 0x01;
    /// Change the current schema.
    pub const INIT_DB: u8 = 0x02;
    /// Text query.
    pub const QUERY: u8 = 0x03;
    /// Column list of a table (deprecated).
    pub const FIELD_LIST: u8 = 0x04;
    /// Create a schema (deprecated).
    pub const CREATE_DB: u8 = 0x05;
    /// Drop a schema (deprecated).
    pub const DROP_DB: u8 = 0x06;
    /// Flush caches (deprecated).
    pub const REFRESH: u8 = 0x07;
    /// Shut the server down (deprecated).
    pub const SHUTDOWN: u8 = 0x08;
    /// Server statistics string.
    pub const STATISTICS: u8 = 0x09;
    /// Process list (deprecated).
    pub const PROCESS_INFO: u8 = 0x0a;
    /// Kill a connection (deprecated).
    pub const PROCESS_KILL: u8 = 0x0c;
    /// Dump debug information to the server log.
    pub const DEBUG: u8 = 0x0d;
    /// Is the server alive.
    pub const PING: u8 = 0x0e;
    /// Re-authenticate as another user.
    pub const CHANGE_USER: u8 = 0x11;
    /// Replication: binlog stream.
    pub const BINLOG_DUMP: u8 = 0x12;
    /// Replication: table dump.
    pub const TABLE_DUMP: u8 = 0x13;
    /// Replication: connect out.
    pub const CONNECT_OUT: u8 = 0x14;
    /// Replication: register a replica.
    pub const REGISTER_SLAVE: u8 = 0x15;
    /// Prepare a binary statement.
    pub const STMT_PREPARE: u8 = 0x16;
    /// Execute a binary statement.
    pub const STMT_EXECUTE: u8 = 0x17;
    /// Send a long parameter (no response).
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    /// Close a binary statement (no response).
    pub const STMT_CLOSE: u8 = 0x19;
    /// Reset a binary statement.
    pub const STMT_RESET: u8 = 0x1a;
    /// Set a connection option (answered with EOF or ERR).
    pub const SET_OPTION: u8 = 0x1b;
    /// Fetch rows from a cursor.
    pub const STMT_FETCH: u8 = 0x1c;
    /// Replication: binlog stream by GTID.
    pub const BINLOG_DUMP_GTID: u8 = 0x1e;
    /// Reset the session.
    pub const RESET_CONNECTION: u8 = 0x1f;
    /// MariaDB: execute a statement for many parameter rows.
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;
}

/// Server error codes (`ER_*`) the proxy sends or reads.
pub mod code {
    /// Too many connections.
    pub const ER_CON_COUNT_ERROR: u16 = 1040;
    /// Bad handshake.
    pub const ER_HANDSHAKE_ERROR: u16 = 1043;
    /// Access denied.
    pub const ER_ACCESS_DENIED_ERROR: u16 = 1045;
    /// Unknown command.
    pub const ER_UNKNOWN_COM_ERROR: u16 = 1047;
    /// Unknown error: the catch-all for the proxy's own failures.
    pub const ER_UNKNOWN_ERROR: u16 = 1105;
    /// Host blocked after too many aborted connects.
    pub const ER_HOST_IS_BLOCKED: u16 = 1129;
    /// Deadlock found when trying to get a lock.
    pub const ER_LOCK_DEADLOCK: u16 = 1213;
    /// Unknown prepared statement handler.
    pub const ER_UNKNOWN_STMT_HANDLER: u16 = 1243;
    /// MariaDB's "connection was killed": what the proxy tells a session it closes because
    /// its backend's drain timeout passed.
    pub const ER_CONNECTION_KILLED: u16 = 1927;
    /// Insecure transport refused while secure transport is required.
    pub const ER_SECURE_TRANSPORT_REQUIRED: u16 = 3159;
}

/// SQL states (five characters) sent in ERR packets.
pub mod sqlstate {
    /// General error.
    pub const GENERAL: &str = "HY000";
    /// Communication link failure (handshake and protocol errors).
    pub const COMM_LINK_FAILURE: &str = "08S01";
    /// Server rejected the connection (too many connections).
    pub const CONNECTION_REJECTED: &str = "08004";
    /// Invalid authorization.
    pub const ACCESS_DENIED: &str = "28000";
    /// Query or connection interrupted (MariaDB's state for a killed connection).
    pub const INTERRUPTED: &str = "70100";
    /// Serialization failure (deadlock).
    pub const SERIALIZATION_FAILURE: &str = "40001";
}

/// Character set / collation ids sent in a handshake.
pub mod charset {
    /// `utf8_general_ci`.
    pub const UTF8_GENERAL_CI: u8 = 33;
    /// `utf8mb4_general_ci`.
    pub const UTF8MB4_GENERAL_CI: u8 = 45;
}
