public import Foundation

/// ISO-8601 timestamps with milliseconds in UTC (`2026-01-06T10:00:00.000Z`), the only date format on the wire.
public enum Timestamp {
    /// Formats `date`, truncated to the millisecond.
    public static func string(from date: Date) -> String {
        let totalMillis = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        let millis = Int(((totalMillis % 1000) + 1000) % 1000)
        let totalSeconds = (totalMillis - Int64(millis)) / 1000
        let days = Int(totalSeconds >= 0 ? totalSeconds / 86_400 : (totalSeconds - 86_399) / 86_400)
        let secondsOfDay = Int(totalSeconds - Int64(days) * 86_400)
        let (year, month, day) = civilDate(fromDays: days)
        var out = [UInt8]()
        out.reserveCapacity(24)
        func append(_ value: Int, digits: Int) {
            var divisor = 1
            for _ in 1..<digits { divisor *= 10 }
            var remaining = value
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(remaining / divisor))
                remaining %= divisor
                divisor /= 10
            }
        }
        append(year, digits: 4)
        out.append(UInt8(ascii: "-"))
        append(month, digits: 2)
        out.append(UInt8(ascii: "-"))
        append(day, digits: 2)
        out.append(UInt8(ascii: "T"))
        append(secondsOfDay / 3600, digits: 2)
        out.append(UInt8(ascii: ":"))
        append(secondsOfDay / 60 % 60, digits: 2)
        out.append(UInt8(ascii: ":"))
        append(secondsOfDay % 60, digits: 2)
        out.append(UInt8(ascii: "."))
        append(millis, digits: 3)
        out.append(UInt8(ascii: "Z"))
        return String(decoding: out, as: UTF8.self)
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z`; returns nil for anything else (other offsets are not accepted).
    public static func date(from string: String) -> Date? {
        let chars = Array(string.utf8)
        guard chars.count >= 20, chars.last == UInt8(ascii: "Z") else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var value = 0
            for index in range {
                let char = chars[index]
                guard char >= UInt8(ascii: "0"), char <= UInt8(ascii: "9") else { return nil }
                value = value * 10 + Int(char - UInt8(ascii: "0"))
            }
            return value
        }
        guard chars[4] == UInt8(ascii: "-"), chars[7] == UInt8(ascii: "-"), chars[10] == UInt8(ascii: "T"),
            chars[13] == UInt8(ascii: ":"), chars[16] == UInt8(ascii: ":"),
            let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
            let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
            (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var millis = 0
        if chars.count > 20 {
            guard chars[19] == UInt8(ascii: "."), chars.count > 21, let fraction = number(20..<(chars.count - 1))
            else { return nil }
            let digits = chars.count - 21
            millis = digits >= 3 ? fraction / Self.power(10, digits - 3) : fraction * Self.power(10, 3 - digits)
        } else if chars.count != 20 {
            return nil
        }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + second)
        return Date(timeIntervalSince1970: TimeInterval(seconds) + TimeInterval(millis) / 1000)
    }

    /// `date` truncated to whole milliseconds, so it survives a round trip through the wire format unchanged.
    public static func truncatedToMilliseconds(_ date: Date) -> Date {
        Date(timeIntervalSince1970: (date.timeIntervalSince1970 * 1000).rounded(.down) / 1000)
    }

    private static func power(_ base: Int, _ exponent: Int) -> Int {
        (0..<exponent).reduce(1) { result, _ in result * base }
    }

    // Howard Hinnant's days_from_civil / civil_from_days algorithms.
    private static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    private static func civilDate(fromDays days: Int) -> (Int, Int, Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}

/// A date that travels as a ``Timestamp`` string and is kept to the millisecond, so what is decoded equals what
/// was encoded.
@propertyWrapper
public struct WireTimestamp: Hashable, Sendable, Codable {
    private var storage: Date

    /// The date, truncated to the millisecond.
    public var wrappedValue: Date {
        get { self.storage }
        set { self.storage = Timestamp.truncatedToMilliseconds(newValue) }
    }

    public init(wrappedValue: Date) {
        self.storage = Timestamp.truncatedToMilliseconds(wrappedValue)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let string = try container.decode(String.self)
        guard let date = Timestamp.date(from: string) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "expected an ISO-8601 UTC timestamp like 2026-01-06T10:00:00.000Z, got '\(string.prefix(64))'"
            )
        }
        self.storage = date
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(Timestamp.string(from: self.storage))
    }
}
