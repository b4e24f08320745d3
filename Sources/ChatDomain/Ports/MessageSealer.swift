/// Authenticated encryption of message content at rest. An implementation holds the current key and any older ones
/// it may still have to open (``ChatDomain/MessageSealing`` turns messages into sealed values and back).
public protocol MessageSealer: Sendable {
    /// The id of the key new seals use.
    var currentKeyID: String { get }

    /// Seals `plaintext` under the current key, bound to `associatedData`: a fresh nonce, the ciphertext and the tag,
    /// in one value.
    func seal(_ plaintext: [UInt8], associatedData: [UInt8]) throws(SealingError) -> [UInt8]

    /// Opens what key `keyID` sealed bound to `associatedData`.
    /// - Throws: ``SealingError`` `unknownKey` (no such key here), `tampered` (the tag does not verify: another key
    ///   under the same id, changed bytes, or the value moved to another message) or `malformed`.
    func open(_ sealed: [UInt8], keyID: String, associatedData: [UInt8]) throws(SealingError) -> [UInt8]
}

/// A sealed value that could not be made or opened.
public struct SealingError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Why.
    public enum Code: String, Sendable {
        /// Sealed with a key id this server does not have (add it to `ENCRYPTION_OLD_KEYS`).
        case unknownKey = "unknown_key"
        /// The authentication tag does not verify.
        case tampered
        /// Not a sealed value chatd wrote.
        case malformed
    }

    public var code: Code
    /// What happened and what to do; never contains content.
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(self.code.rawValue): \(self.message)" }
}
