-- The legacy table, as the Node app's owners created it.
CREATE TABLE IF NOT EXISTS whatsapp_sessions (
  id SERIAL PRIMARY KEY,
  session_id VARCHAR(255),
  status VARCHAR(50) NOT NULL DEFAULT 'disconnected',
  phone_number VARCHAR(50),
  last_seen TIMESTAMP,
  auth_folder_path TEXT,
  whatsapp_user_id VARCHAR(255),
  created_at TIMESTAMP NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMP NOT NULL DEFAULT NOW()
);
