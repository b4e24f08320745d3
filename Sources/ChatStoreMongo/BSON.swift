import ChatDomain
import Foundation

/// A BSON value, as the store writes it to and reads it from MongoDB (the binary format of bsonspec.org, written
/// and read here; libmongoc only carries the bytes).
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
    /// A value of a type the store never writes nor reads (binary data, timestamps, decimals...), by its BSON type
    /// byte: servers put some in their replies (`$clusterTime`, `operationTime`).
    case other(type: UInt8)
    /// A document already written as BSON bytes (``BSONDocument/encoded()``), written as it is: a batch command
    /// carries its documents this way, each encoded once, when its size was checked. Never read.
    case encoded([UInt8])

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
struct BSONDocument: Sendable, Equatable, ExpressibleByDictionaryLiteral, CustomStringConvertible {
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

    /// The field names and value types, for error messages (never the values: they may be message content).
    var description: String {
        "{" + self.fields.map { "\($0.key): \(Self.typeName($0.value))" }.joined(separator: ", ") + "}"
    }

    private static func typeName(_ value: BSON) -> String {
        switch value {
        case .null: "null"
        case .bool: "bool"
        case .int: "int"
        case .double: "double"
        case .string: "string"
        case .date: "date"
        case .objectID: "objectId"
        case .array(let values): "array(\(values.count))"
        case .document(let document): document.description
        case .other(let type): "type 0x\(String(type, radix: 16))"
        case .encoded(let bytes): "document(\(bytes.count) bytes)"
        }
    }

    /// The document as BSON bytes.
    /// - Throws: ``BSONError`` when a field name holds a NUL byte (BSON cannot write it).
    func encoded() throws(BSONError) -> [UInt8] {
        var writer = BSONWriter()
        try writer.document(self)
        return writer.bytes
    }

    /// Reads one document from BSON bytes (all of them).
    /// - Throws: ``BSONError`` for bytes that are not one well-formed document.
    static func decode(_ bytes: UnsafeRawBufferPointer) throws(BSONError) -> BSONDocument {
        var reader = BSONReader(bytes: bytes)
        let document = try reader.document()
        guard reader.offset == bytes.count else { throw BSONError("\(bytes.count - reader.offset) bytes after the document") }
        return document
    }
}

/// BSON that cannot be written or read; says what is wrong.
struct BSONError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Writes BSON (little-endian, length-prefixed documents).
private struct BSONWriter {
    var bytes: [UInt8] = []

    init() {
        self.bytes.reserveCapacity(256)
    }

    mutating func document(_ document: BSONDocument) throws(BSONError) {
        let start = self.bytes.count
        self.int32(0)
        for field in document.fields { try self.element(field.key, field.value) }
        self.bytes.append(0)
        self.patchLength(at: start)
    }

    private mutating func array(_ values: [BSON]) throws(BSONError) {
        let start = self.bytes.count
        self.int32(0)
        for (index, value) in values.enumerated() { try self.element(String(index), value) }
        self.bytes.append(0)
        self.patchLength(at: start)
    }

    private mutating func element(_ key: String, _ value: BSON) throws(BSONError) {
        let typeAt = self.bytes.count
        self.bytes.append(0)
        guard !key.utf8.contains(0) else { throw BSONError("the field name '\(key.prefix(64))' holds a NUL byte") }
        self.bytes.append(contentsOf: key.utf8)
        self.bytes.append(0)
        let type: UInt8
        switch value {
        case .double(let value):
            type = 0x01
            self.int64(Int64(bitPattern: value.bitPattern))
        case .string(let value):
            type = 0x02
            self.int32(Int32(value.utf8.count + 1))
            self.bytes.append(contentsOf: value.utf8)
            self.bytes.append(0)
        case .document(let document):
            type = 0x03
            try self.document(document)
        case .array(let values):
            type = 0x04
            try self.array(values)
        case .objectID(let id):
            type = 0x07
            self.bytes.append(contentsOf: id.bytes)
        case .bool(let value):
            type = 0x08
            self.bytes.append(value ? 1 : 0)
        case .date(let value):
            type = 0x09
            self.int64(Int64((value.timeIntervalSince1970 * 1000).rounded(.down)))
        case .null:
            type = 0x0A
        case .int(let value):
            type = 0x12
            self.int64(value)
        case .encoded(let document):
            type = 0x03
            self.bytes.append(contentsOf: document)
        case .other(let unknown):
            throw BSONError("a value of BSON type 0x\(String(unknown, radix: 16)) cannot be written")
        }
        self.bytes[typeAt] = type
    }

    private mutating func int32(_ value: Int32) {
        withUnsafeBytes(of: value.littleEndian) { self.bytes.append(contentsOf: $0) }
    }

    private mutating func int64(_ value: Int64) {
        withUnsafeBytes(of: value.littleEndian) { self.bytes.append(contentsOf: $0) }
    }

    private mutating func patchLength(at start: Int) {
        let length = Int32(self.bytes.count - start).littleEndian
        withUnsafeBytes(of: length) { raw in
            for (index, byte) in raw.enumerated() { self.bytes[start + index] = byte }
        }
    }
}

/// Reads BSON, checking every length against the bytes there are.
private struct BSONReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    mutating func document() throws(BSONError) -> BSONDocument {
        let start = self.offset
        let length = Int(try self.int32())
        guard length >= 5, start + length <= self.bytes.count else { throw BSONError("a document's length (\(length)) is out of bounds") }
        let end = start + length - 1
        var fields: [(key: String, value: BSON)] = []
        while self.offset < end {
            let type = try self.byte()
            let key = try self.cString()
            fields.append((key, try self.value(of: type)))
        }
        guard self.offset == end, try self.byte() == 0 else { throw BSONError("a document does not end where its length says") }
        return BSONDocument(fields)
    }

    private mutating func value(of type: UInt8) throws(BSONError) -> BSON {
        switch type {
        case 0x01: return .double(Double(bitPattern: UInt64(bitPattern: try self.int64())))
        case 0x02: return .string(try self.string())
        case 0x03: return .document(try self.document())
        case 0x04: return .array(try self.document().fields.map(\.value))
        case 0x05:
            let length = Int(try self.int32())
            try self.skip(length + 1)  // subtype, then the bytes
            return .other(type: type)
        case 0x0A: return .null
        case 0x06, 0x7F, 0xFF: return .other(type: type)  // undefined, max key, min key: no value bytes
        case 0x07: return .objectID(MessageID(bytes: Array(try self.take(12))))
        case 0x08: return .bool(try self.byte() != 0)
        case 0x09: return .date(Date(timeIntervalSince1970: TimeInterval(try self.int64()) / 1000))
        case 0x0B:
            _ = try self.cString()
            _ = try self.cString()
            return .other(type: type)
        case 0x0D, 0x0E:
            _ = try self.string()
            return .other(type: type)
        case 0x10: return .int(Int64(try self.int32()))
        case 0x11:
            try self.skip(8)
            return .other(type: type)
        case 0x12: return .int(try self.int64())
        case 0x13:
            try self.skip(16)
            return .other(type: type)
        default:
            throw BSONError("unknown BSON type 0x\(String(type, radix: 16))")
        }
    }

    private mutating func take(_ count: Int) throws(BSONError) -> UnsafeRawBufferPointer {
        guard count >= 0, self.offset + count <= self.bytes.count else { throw BSONError("a value runs past the end of the reply") }
        defer { self.offset += count }
        return UnsafeRawBufferPointer(rebasing: self.bytes[self.offset..<self.offset + count])
    }

    private mutating func skip(_ count: Int) throws(BSONError) {
        _ = try self.take(count)
    }

    private mutating func byte() throws(BSONError) -> UInt8 {
        try self.take(1)[0]
    }

    private mutating func int32() throws(BSONError) -> Int32 {
        let raw = try self.take(4)
        return Int32(littleEndian: raw.loadUnaligned(as: Int32.self))
    }

    private mutating func int64() throws(BSONError) -> Int64 {
        let raw = try self.take(8)
        return Int64(littleEndian: raw.loadUnaligned(as: Int64.self))
    }

    private mutating func cString() throws(BSONError) -> String {
        guard let end = self.bytes[self.offset...].firstIndex(of: 0) else { throw BSONError("a field name is not terminated") }
        defer { self.offset = end + 1 }
        return String(decoding: UnsafeRawBufferPointer(rebasing: self.bytes[self.offset..<end]), as: UTF8.self)
    }

    private mutating func string() throws(BSONError) -> String {
        let length = Int(try self.int32())
        guard length >= 1 else { throw BSONError("a string's length (\(length)) is out of bounds") }
        let raw = try self.take(length)
        guard raw[length - 1] == 0 else { throw BSONError("a string is not terminated") }
        return String(decoding: UnsafeRawBufferPointer(rebasing: raw[0..<length - 1]), as: UTF8.self)
    }
}
