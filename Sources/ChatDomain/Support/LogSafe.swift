/// Makes client-supplied text safe to put in a log line or an error message.
///
/// A client chooses chat ids, participant ids, event names and token subjects. Written raw, a newline in one of
/// them forges a whole log line, and a 1 MB id writes 1 MB to the log for every refused request. Every such value
/// goes through ``value(_:limit:)`` (or ``quoted(_:limit:)``) before it reaches a logger or an error text.
public enum LogSafe {
    /// The most characters of a client-supplied value that are kept. Default for ``value(_:limit:)``.
    public static let defaultLimit = 128

    /// `text` with control characters escaped (`\n`, `\r`, `\t`, `\u{..}`) and cut to `limit` characters; a cut
    /// value ends with `…(<n> bytes)`, its full length in UTF-8 bytes.
    public static func value(_ text: some StringProtocol, limit: Int = LogSafe.defaultLimit) -> String {
        var out = ""
        var kept = 0
        for scalar in text.unicodeScalars {
            if kept == limit {
                return out + "…(\(text.utf8.count) bytes)"
            }
            kept += 1
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\\": out += "\\\\"
            default:
                if Self.isControl(scalar) {
                    out += "\\u{" + String(scalar.value, radix: 16) + "}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    /// ``value(_:limit:)`` in single quotes, for error messages: `'abc'`.
    public static func quoted(_ text: some StringProtocol, limit: Int = LogSafe.defaultLimit) -> String {
        "'" + Self.value(text, limit: limit) + "'"
    }

    /// C0 and C1 controls, DEL, and the Unicode line and paragraph separators (some log viewers break lines there).
    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F, 0x2028, 0x2029: true
        default: false
        }
    }
}
