-- The legacy app's table, for a fresh PostgreSQL database. Existing legacy databases keep
-- their own schema: the gateway reads serial/bigserial ids, varchar/text, timestamp/timestamptz
-- and an enum status alike, and only migrates PostgreSQL when told to (`migrate` subcommand).
CREATE TABLE IF NOT EXISTS whatsapp_sessions (
    id               BIGSERIAL PRIMARY KEY,
    session_id       TEXT,
    status           TEXT NOT NULL DEFAULT 'disconnected',
    phone_number     TEXT,
    last_seen        TIMESTAMPTZ,
    auth_folder_path TEXT,
    whatsapp_user_id TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
