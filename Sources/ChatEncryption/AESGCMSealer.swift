public import ChatDomain
import Crypto
public import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// ``ChatDomain/MessageSealer`` with AES-256-GCM (swift-crypto): a fresh 96-bit nonce per seal, a 128-bit tag, the
/// current key for new seals and older keys for opening what they sealed.
public struct AESGCMSealer: MessageSealer {
    public let currentKeyID: String
    private let keys: [String: SymmetricKey]
    private let nonces = NoncePool()

    /// A sealer with `current` (id and 32 key bytes) and `older` keys for reading.
    /// - Throws: ``EncryptionKeyError`` for a key that is not 32 bytes, an id that is empty, too long or not
    ///   `[A-Za-z0-9._-]`, or two keys under one id.
    public init(current: (id: String, key: Data), older: [(id: String, key: Data)] = []) throws(EncryptionKeyError) {
        var keys: [String: SymmetricKey] = [:]
        for (index, entry) in ([current] + older).enumerated() {
            let name = index == 0 ? "ENCRYPTION_KEY" : "ENCRYPTION_OLD_KEYS"
            guard Self.isValidID(entry.id) else {
                throw EncryptionKeyError("\(index == 0 ? "ENCRYPTION_KEY_ID" : name): a key id is 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-' (got '\(entry.id.prefix(80))')")
            }
            guard entry.key.count == 32 else {
                throw EncryptionKeyError("\(name): key '\(entry.id)' is \(entry.key.count) bytes; AES-256 needs exactly 32 (generate one with: openssl rand -base64 32)")
            }
            guard keys[entry.id] == nil else {
                throw EncryptionKeyError("\(name): key id '\(entry.id)' is given twice; every key needs its own id")
            }
            keys[entry.id] = SymmetricKey(data: entry.key)
        }
        self.currentKeyID = current.id
        self.keys = keys
    }

    /// The ids of the keys it can open with, current first.
    public var keyIDs: [String] { [self.currentKeyID] + self.keys.keys.filter { $0 != self.currentKeyID }.sorted() }

    public func seal(_ plaintext: [UInt8], associatedData: [UInt8]) throws(SealingError) -> [UInt8] {
        do {
            let nonce = try AES.GCM.Nonce(data: self.nonces.next())
            guard let combined = try AES.GCM.seal(plaintext, using: self.keys[self.currentKeyID]!, nonce: nonce, authenticating: associatedData).combined else {
                throw SealingError(.malformed, "AES-GCM gave no combined value")
            }
            return Array(combined)
        } catch let error as SealingError {
            throw error
        } catch {
            throw SealingError(.malformed, "AES-GCM could not seal: \(error)")
        }
    }

    public func open(_ sealed: [UInt8], keyID: String, associatedData: [UInt8]) throws(SealingError) -> [UInt8] {
        guard let key = self.keys[keyID] else {
            throw SealingError(.unknownKey, "sealed with key '\(keyID.prefix(64))', which is not configured (known: \(self.keyIDs.joined(separator: ", ")))")
        }
        let box: AES.GCM.SealedBox
        do {
            box = try AES.GCM.SealedBox(combined: sealed)
        } catch {
            throw SealingError(.malformed, "the sealed value is too short or not AES-GCM")
        }
        do {
            return Array(try AES.GCM.open(box, using: key, authenticating: associatedData))
        } catch {
            throw SealingError(.tampered, "the authentication tag does not verify under key '\(keyID.prefix(64))' (wrong key, changed bytes, or moved to another message)")
        }
    }

    static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64 && id.utf8.allSatisfy { byte in
            (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z")) || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
    }
}

/// Fresh random 96-bit nonces from the kernel's CSPRNG (`/dev/urandom`), read 4 KiB at a time: one read per 341
/// seals instead of a `getrandom` call or two per seal (the system calls were the largest single cost of a seal).
/// Each nonce is used once.
final class NoncePool: Sendable {
    private static let size = 4096
    private let state = Mutex<(bytes: [UInt8], next: Int)>(([], 0))

    func next() -> [UInt8] {
        self.state.withLock { state in
            if state.next + 12 > state.bytes.count {
                state.bytes = Self.random(Self.size)
                state.next = 0
            }
            defer { state.next += 12 }
            return Array(state.bytes[state.next..<state.next + 12])
        }
    }

    private static func random(_ count: Int) -> [UInt8] {
        #if canImport(Glibc)
        var bytes = [UInt8](repeating: 0, count: count)
        let descriptor = open("/dev/urandom", O_RDONLY | O_CLOEXEC)
        if descriptor >= 0 {
            defer { close(descriptor) }
            var filled = 0
            while filled < count {
                let read = bytes.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress! + filled, count - filled) }
                if read > 0 {
                    filled += read
                } else if read < 0, errno == EINTR {
                    continue
                } else {
                    break
                }
            }
            if filled == count { return bytes }
        }
        #endif
        // Without /dev/urandom: the system generator, eight bytes a call.
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
    }
}

/// A key setting that cannot work; the message names the variable and says what to do.
public struct EncryptionKeyError: Error, CustomStringConvertible, Sendable {
    /// What is wrong, naming the variable.
    public let message: String

    init(_ message: String) { self.message = message }

    public var description: String { self.message }
}

extension AESGCMSealer {
    /// The sealer the settings describe: `key` (base64 of 32 bytes) under `keyID`, and `oldKeys`
    /// (`id:base64,id:base64`).
    /// - Throws: ``EncryptionKeyError`` naming `ENCRYPTION_KEY`, `ENCRYPTION_KEY_ID` or `ENCRYPTION_OLD_KEYS`.
    public init(key: String, keyID: String?, oldKeys: String?) throws(EncryptionKeyError) {
        guard let keyID, !keyID.isEmpty else {
            throw EncryptionKeyError("ENCRYPTION_KEY_ID must be set with ENCRYPTION_KEY: every sealed value names its key, so a rotated key needs a new id")
        }
        guard let bytes = Data(base64Encoded: key.trimmingCharacters(in: .whitespaces)) else {
            throw EncryptionKeyError("ENCRYPTION_KEY is not base64 (generate one with: openssl rand -base64 32)")
        }
        var older: [(id: String, key: Data)] = []
        for item in (oldKeys ?? "").split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
            guard let colon = item.firstIndex(of: ":") else {
                throw EncryptionKeyError("ENCRYPTION_OLD_KEYS must be id:base64 pairs separated by commas (an entry has no ':')")
            }
            let id = String(item[..<colon])
            guard let old = Data(base64Encoded: String(item[item.index(after: colon)...])) else {
                throw EncryptionKeyError("ENCRYPTION_OLD_KEYS: the key of '\(id.prefix(64))' is not base64")
            }
            older.append((id, old))
        }
        try self.init(current: (keyID, bytes), older: older)
    }
}
