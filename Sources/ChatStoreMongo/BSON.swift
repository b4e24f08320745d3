import ChatDomain
import Foundation

/// A BSON value, written to and read from MongoDB's extended JSON (the only form the C shim exchanges).
indirect enum BSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case date(Date)
    case objectID(MessageID)
    case array([BSON])
    case document(BSONDocument)

    /// Canonical extended JSON, which keeps every type exactly.
    var extendedJSON: String {
        var out = ""
        self.write(to: &out)
        return out
    }

    func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .int(let value): out += "{\"$numberLong\":\"\(value)\"}"
        case .double(let value):
            if value.isFinite { out += "{\"$numberDouble\":\"\(value)\"}" } else { out += "null" }
        case .string(let value): Self.writeString(value, to: &out)
        case .date(let value):
            out += "{\"$date\":{\"$numberLong\":\"\(Int64((value.timeIntervalSince1970 * 1000).rounded(.down)))\"}}"
        case .objectID(let value): out += "{\"$oid\":\"\(value.hexString)\"}"
        case .array(let values):
            out += "["
            for (index, value) in values.enumerated() {
                if index > 0 { out += "," }
                value.write(to: &out)
            }
            out += "]"
        case .document(let document): document.write(to: &out)
        }
    }

    static func writeString(_ value: String, to out: inout String) {
        out += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    var string: String? { if case .string(let value) = self { value } else { nil } }
    var document: BSONDocument? { if case .document(let value) = self { value } else { nil } }
    var array: [BSON]? { if case .array(let value) = self { value } else { nil } }
    var date: Date? { if case .date(let value) = self { value } else { nil } }
    var objectID: MessageID? { if case .objectID(let value) = self { value } else { nil } }
    var int: Int64? {
        switch self {
        case .int(let value): value
        case .double(let value) where value == value.rounded(): Int64(exactly: value)
        default: nil
        }
    }
}

/// A BSON document: ordered fields.
struct BSONDocument: Sendable, Equatable, ExpressibleByDictionaryLiteral {
    var fields: [(key: String, value: BSON)]

    init(dictionaryLiteral elements: (String, BSON)...) {
        self.fields = elements.map { (key: $0.0, value: $0.1) }
    }

    init(_ fields: [(key: String, value: BSON)]) {
        self.fields = fields
    }

    subscript(key: String) -> BSON? {
        self.fields.first { $0.key == key }?.value
    }

    static func == (lhs: BSONDocument, rhs: BSONDocument) -> Bool {
        lhs.fields.count == rhs.fields.count
            && zip(lhs.fields, rhs.fields).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }

    var extendedJSON: String {
        var out = ""
        self.write(to: &out)
        return out
    }

    func write(to out: inout String) {
        out += "{"
        for (index, field) in self.fields.enumerated() {
            if index > 0 { out += "," }
            BSON.writeString(field.key, to: &out)
            out += ":"
            field.value.write(to: &out)
        }
        out += "}"
    }

    /// Parses relaxed or canonical extended JSON.
    static func parse(_ json: String) throws -> BSONDocument {
        let value = try JSONDecoder().decode(ExtendedJSONValue.self, from: Data(json.utf8)).value
        guard case .document(let document) = value else {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "the reply is not a document"))
        }
        return document
    }
}

/// Decodes one extended-JSON value into ``BSON``, unwrapping `$oid`, `$date` and the number wrappers.
private struct ExtendedJSONValue: Decodable {
    var value: BSON

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    init(from decoder: any Decoder) throws {
        if let container = try? decoder.container(keyedBy: Key.self) {
            let keys = container.allKeys
            var fields: [(key: String, value: BSON)] = []
            for key in keys {
                fields.append((key.stringValue, try container.decode(ExtendedJSONValue.self, forKey: key).value))
            }
            self.value = Self.unwrap(BSONDocument(fields))
            return
        }
        if var container = try? decoder.unkeyedContainer() {
            var values: [BSON] = []
            while !container.isAtEnd { values.append(try container.decode(ExtendedJSONValue.self).value) }
            self.value = .array(values)
            return
        }
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self.value = .null
        } else if let bool = try? container.decode(Bool.self) {
            self.value = .bool(bool)
        } else if let int = try? container.decode(Int64.self) {
            self.value = .int(int)
        } else if let double = try? container.decode(Double.self) {
            self.value = .double(double)
        } else {
            self.value = .string(try container.decode(String.self))
        }
    }

    private static func unwrap(_ document: BSONDocument) -> BSON {
        guard document.fields.count == 1, let field = document.fields.first else { return .document(document) }
        switch (field.key, field.value) {
        case ("$oid", .string(let hex)):
            return MessageID(hex: hex).map(BSON.objectID) ?? .document(document)
        case ("$date", .string(let iso)):
            return Timestamp.date(from: iso).map(BSON.date) ?? .document(document)
        case ("$date", .int(let millis)):
            return .date(Date(timeIntervalSince1970: TimeInterval(millis) / 1000))
        case ("$numberLong", .string(let text)), ("$numberInt", .string(let text)):
            return Int64(text).map(BSON.int) ?? .document(document)
        case ("$numberDouble", .string(let text)):
            return Double(text).map(BSON.double) ?? .document(document)
        default:
            return .document(document)
        }
    }
}
