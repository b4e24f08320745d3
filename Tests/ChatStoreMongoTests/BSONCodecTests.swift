import ChatDomain
@testable import ChatStoreMongo
import Foundation
import Testing

/// The BSON the store writes and reads itself: bsonspec.org's layout, and clear errors for what is not BSON.
@Suite("BSON codec")
struct BSONCodecTests {
    private func decode(_ bytes: [UInt8]) throws(BSONError) -> BSONDocument {
        do {
            return try bytes.withUnsafeBytes { raw in try BSONDocument.decode(raw) }
        } catch let error as BSONError {
            throw error
        } catch {
            throw BSONError("\(error)")
        }
    }

    @Test("bsonspec.org's example, byte for byte, both ways")
    func specExample() throws {
        let bytes: [UInt8] = [0x16, 0, 0, 0, 0x02] + Array("hello".utf8) + [0, 0x06, 0, 0, 0] + Array("world".utf8) + [0, 0]
        let document: BSONDocument = ["hello": .string("world")]
        #expect(try document.encoded() == bytes)
        #expect(try self.decode(bytes) == document)
    }

    @Test("Every type the store writes reads back the same, nested and in order")
    func roundTrip() throws {
        let id = MessageID(bytes: Array(0..<12))
        let document: BSONDocument = [
            "s": .string("héllo 👋 \"q\" \\ \n\u{0}after-nul"),
            "i": .int(-1_234_567_890_123),
            "d": .double(1024.5),
            "b": .bool(true),
            "n": .null,
            "t": .date(Date(timeIntervalSince1970: 1_767_693_600.123)),
            "o": .objectID(id),
            "a": .array([.int(1), .string("x"), .array([]), .document(["k": .bool(false)])]),
            "doc": .document(["nested": .document(["deeper": .string("yes")])]),
        ]
        let read = try self.decode(try document.encoded())
        #expect(read == document)
        #expect(read.fields.map(\.key) == ["s", "i", "d", "b", "n", "t", "o", "a", "doc"])
    }

    @Test("Types a server adds to its replies are skipped over, and int32 reads as an int")
    func serverTypes() throws {
        var bytes: [UInt8] = [0, 0, 0, 0]
        bytes += [0x11] + Array("operationTime".utf8) + [0] + [1, 2, 3, 4, 5, 6, 7, 8]  // timestamp
        bytes += [0x05] + Array("hash".utf8) + [0] + [3, 0, 0, 0, 0x00, 9, 9, 9]  // 3 bytes of binary, subtype 0
        bytes += [0x10] + Array("ok".utf8) + [0] + [1, 0, 0, 0]  // int32 1
        bytes += [0]
        bytes[0] = UInt8(bytes.count)
        let read = try self.decode(bytes)
        #expect(read["operationTime"] == .other(type: 0x11))
        #expect(read["hash"] == .other(type: 0x05))
        #expect(read["ok"]?.int == 1)
    }

    @Test("Bytes that are not one well-formed document are refused with what is wrong, never read past their end")
    func malformed() throws {
        let good = try (["key": .string("value")] as BSONDocument).encoded()
        for cut in 0..<good.count {
            #expect(throws: BSONError.self, "cut at \(cut)") { try self.decode(Array(good.prefix(cut))) }
        }
        var lying = good
        lying[0] = 200  // a length past the bytes
        #expect(throws: BSONError.self) { try self.decode(lying) }
        var unknown = good
        unknown[4] = 0x42  // no such type
        #expect(throws: BSONError.self) { try self.decode(unknown) }
        #expect(throws: BSONError.self, "bytes after the document") { try self.decode(good + [0]) }
    }

    @Test("A field name with a NUL byte (a client's attachment key) cannot be written: an error, not a corrupt command")
    func nulInKey() {
        let document: BSONDocument = ["attachments": .array([.document(["a\u{0}b": .int(1)])])]
        #expect(throws: BSONError.self) { try document.encoded() }
    }
}
