-- The legacy app's table, for a fresh embedded database.
CREATE TABLE IF NOT EXISTS whatsapp_sessions (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id       TEXT,
    status           TEXT NOT NULL DEFAULT 'disconnected',
    phone_number     TEXT,
    last_seen        TEXT,
    auth_folder_path TEXT,
    whatsapp_user_id TEXT,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
