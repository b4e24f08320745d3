import Foundation

/// The JSON text chatd sends: Foundation's encoder without escaped slashes (URLs in attachments stay readable).
enum WireJSON {
    static func encode(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return try encoder.encode(value)
    }
}
