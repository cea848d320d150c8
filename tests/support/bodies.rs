//! The contract's answers (CONTRACT.md), byte for byte, as the tests expect them: one place,
//! so a message is written once.

pub const INVALID_ID: &str = r#"{"success":false,"error":"ID inválido"}"#;
pub const NOT_FOUND: &str = r#"{"success":false,"error":"Sesión de WhatsApp no encontrada"}"#;
pub const NO_SESSION_ID: &str =
    r#"{"success":false,"error":"La sesión no tiene session_id del orquestador"}"#;
pub const METHOD_NOT_ALLOWED: &str = r#"{"success":false,"error":"Método no permitido"}"#;
pub const DB_DOWN: &str = r#"{"success":false,"error":"Base de datos no disponible"}"#;
pub const WARNING: &str = "La sesión se desconectó en el orquestador, pero no se pudo actualizar su estado en la base de datos";

pub fn not_connected(status: &str) -> String {
    format!(
        r#"{{"success":false,"error":"La sesión no está conectada","details":"Estado actual: {status}"}}"#
    )
}

pub fn bad_gateway(details: &str) -> String {
    format!(
        r#"{{"success":false,"error":"Error al comunicarse con el orquestador de WhatsApp","details":"{details}"}}"#
    )
}

pub fn refused(details: &str) -> String {
    format!(
        r#"{{"success":false,"error":"Error al desconectar sesión en el orquestador","details":"{details}"}}"#
    )
}
