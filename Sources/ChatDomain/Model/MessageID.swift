public import Foundation
import Synchronization

/// A 12-byte, time-ordered message id, written as 24 lowercase hex characters (MongoDB's ObjectId layout:
/// 4 bytes of seconds since 1970, 5 random bytes, a 3-byte counter).
///
/// Ids from one ``MessageIDGenerator`` sort in the order they were generated, so sorting by id is sorting by
/// acceptance order.
public struct MessageID: Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    /// The 24 lowercase hex characters.
    public let hexString: String

    /// Parses 24 hex characters (either case); returns nil for anything else.
    public init?(hex: String) {
        let utf8 = hex.utf8
        guard utf8.count == 24, utf8.allSatisfy({ $0.isHexDigit }) else { return nil }
        self.hexString = hex.lowercased()
    }

    /// Builds an id from its 12 bytes.
    public init(bytes: [UInt8]) {
        precondition(bytes.count == 12, "a MessageID has 12 bytes")
        let digits = Array("0123456789abcdef".utf8)
        var utf8 = [UInt8]()
        utf8.reserveCapacity(24)
        for byte in bytes {
            utf8.append(digits[Int(byte >> 4)])
            utf8.append(digits[Int(byte & 0x0f)])
        }
        self.hexString = String(decoding: utf8, as: UTF8.self)
    }

    /// The 12 bytes of the id.
    public var bytes: [UInt8] {
        var result = [UInt8]()
        result.reserveCapacity(12)
        var high: UInt8 = 0
        for (index, char) in self.hexString.utf8.enumerated() {
            let value = char.hexValue
            if index.isMultiple(of: 2) { high = value } else { result.append(high << 4 | value) }
        }
        return result
    }

    /// The second the id was generated in.
    public var timestamp: Date {
        let bytes = self.bytes
        let seconds = UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])
        return Date(timeIntervalSince1970: TimeInterval(seconds))
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let string = try container.decode(String.self)
        guard let id = MessageID(hex: string) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "expected a 24-character hex message id, got '\(string.prefix(64))'"
            )
        }
        self = id
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(self.hexString)
    }

    public var description: String { self.hexString }
    // Same length, lowercase hex: string order is byte order.
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.hexString < rhs.hexString }
}

/// Generates strictly increasing ``MessageID``s, also when the wall clock steps back or one second holds more ids
/// than the counter.
public final class MessageIDGenerator: Sendable {
    private struct State {
        var last: [UInt8]
    }

    private let clock: any WallClock
    private let state: Mutex<State>
    private let processBytes: [UInt8]

    /// Creates a generator that reads seconds from `clock`.
    public init(clock: any WallClock = SystemWallClock()) {
        self.clock = clock
        var generator = SystemRandomNumberGenerator()
        self.processBytes = (0..<5).map { _ in UInt8.random(in: 0...255, using: &generator) }
        self.state = Mutex(State(last: [UInt8](repeating: 0, count: 12)))
    }

    /// The next id, greater than every id this generator returned before.
    public func next() -> MessageID {
        let seconds = UInt32(clamping: Int64(self.clock.now().timeIntervalSince1970.rounded(.down)))
        let bytes = self.state.withLock { state -> [UInt8] in
            var candidate = [
                UInt8(truncatingIfNeeded: seconds >> 24), UInt8(truncatingIfNeeded: seconds >> 16),
                UInt8(truncatingIfNeeded: seconds >> 8), UInt8(truncatingIfNeeded: seconds),
            ]
            candidate += self.processBytes
            candidate += [0, 0, 0]
            if candidate.lexicographicallyPrecedes(state.last) || candidate == state.last {
                candidate = Self.increment(state.last)
            }
            state.last = candidate
            return candidate
        }
        return MessageID(bytes: bytes)
    }

    private static func increment(_ bytes: [UInt8]) -> [UInt8] {
        var result = bytes
        var index = result.count - 1
        while index >= 0 {
            let (value, overflow) = result[index].addingReportingOverflow(1)
            result[index] = value
            if !overflow { break }
            index -= 1
        }
        return result
    }
}

extension UInt8 {
    fileprivate var isHexDigit: Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(self) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(self)
            || (UInt8(ascii: "A")...UInt8(ascii: "F")).contains(self)
    }

    fileprivate var hexValue: UInt8 {
        switch self {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): self - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): self - UInt8(ascii: "a") + 10
        default: self - UInt8(ascii: "A") + 10
        }
    }
}
