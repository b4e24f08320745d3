public import ChatDomain
public import Foundation
import JWTKit

/// Why a token was refused; `rawValue` is the code clients see in `CONNECT_ERROR`'s `data.code`.
public enum AuthenticationFailure: String, Error, Sendable, Hashable, CustomStringConvertible {
    /// No token in the CONNECT auth payload nor in an `Authorization: Bearer` header.
    case missingToken = "missing_token"
    /// The token is not a well-formed JWT.
    case malformedToken = "malformed_token"
    /// The header names an algorithm other than the server's (`HS256`), `none` among them.
    case invalidAlgorithm = "invalid_algorithm"
    /// The signature does not match the server's secret (a forged token, or one made with another secret).
    case invalidSignature = "invalid_signature"
    /// The token's `exp` has passed.
    case expiredToken = "token_expired"
    /// The token's `nbf` is still in the future.
    case notYetValid = "token_not_yet_valid"
    /// The token lacks `sub` or `exp`, or a claim has the wrong type or value.
    case invalidClaims = "invalid_claims"
    /// The token's `iss` is not the configured issuer.
    case invalidIssuer = "invalid_issuer"
    /// The token's `aud` does not name the configured audience.
    case invalidAudience = "invalid_audience"
    /// The token lives longer than the server allows (`exp` too far after `iat` or now).
    case lifetimeTooLong = "token_lifetime_too_long"

    public var description: String {
        switch self {
        case .missingToken: "no token: send {\"token\": \"<jwt>\"} as the CONNECT auth payload or an Authorization: Bearer header"
        case .malformedToken: "the token is not a JWT (three base64url parts separated by dots)"
        case .invalidAlgorithm: "the token's header must say \"alg\": \"HS256\""
        case .invalidSignature: "the token's signature does not match this server's secret"
        case .expiredToken: "the token has expired; get a new one"
        case .notYetValid: "the token is not valid yet (nbf is in the future)"
        case .invalidClaims: "the token needs a string 'sub' (the user id, 1 to 256 bytes, no control characters) and a numeric 'exp'"
        case .invalidIssuer: "the token's 'iss' is not this server's issuer"
        case .invalidAudience: "the token's 'aud' does not name this server"
        case .lifetimeTooLong: "the token lives longer than this server allows; get a shorter-lived one"
        }
    }
}

/// Verifies and mints HS256 access tokens with one shared secret (jwt-kit).
///
/// A token must say `"alg": "HS256"` in its header, carry a string `sub` (the user id) and a numeric `exp`, and,
/// when configured, the expected `iss` and `aud`; `nbf` is honoured, and a token may not live longer than
/// ``Configuration/maxLifetime``.
public struct TokenAuthenticator: Sendable {
    /// What a token must satisfy.
    public struct Configuration: Sendable {
        /// The HS256 secret; at least 32 bytes.
        public var secret: String
        /// The `iss` every token must carry; nil accepts any (or none).
        public var issuer: String?
        /// A value every token's `aud` must name; nil accepts any (or none).
        public var audience: String?
        /// The longest a token may live, from its `iat` (or from now when it has none) to its `exp`; nil for no cap.
        /// Default 24 hours.
        public var maxLifetime: Duration? = .seconds(24 * 60 * 60)
        /// Clock skew tolerated on `exp`, `nbf` and the lifetime. Default 30 seconds.
        public var leeway: Duration = .seconds(30)

        /// A configuration with `secret` and the defaults.
        public init(secret: String) {
            self.secret = secret
        }
    }

    /// The algorithm every token must name.
    public static let algorithm = "HS256"

    /// The settings.
    public let configuration: Configuration
    private let keys: JWTKeyCollection

    /// An authenticator for `configuration`; the secret must be at least 32 bytes (HS256 needs a key as long as its
    /// digest).
    public init(configuration: Configuration) async throws(ChatError) {
        guard configuration.secret.utf8.count >= 32 else {
            throw ChatError(
                .badRequest,
                "the JWT secret must be at least 32 bytes long (got \(configuration.secret.utf8.count)); set JWT_SECRET"
            )
        }
        if let maxLifetime = configuration.maxLifetime, maxLifetime <= .zero {
            throw ChatError(.badRequest, "the maximum token lifetime must be positive; set JWT_MAX_TTL")
        }
        self.configuration = configuration
        self.keys = JWTKeyCollection()
        await self.keys.add(hmac: HMACKey(from: configuration.secret), digestAlgorithm: .sha256)
    }

    /// An authenticator for `secret` with the default checks.
    public init(secret: String) async throws(ChatError) {
        try await self.init(configuration: Configuration(secret: secret))
    }

    /// The user a token names, or why it is refused; `now` is the time the claims are checked against.
    public func authenticate(_ token: String?, now: Date = Date()) async -> Result<User, AuthenticationFailure> {
        guard let token, !token.isEmpty else { return .failure(.missingToken) }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, token.utf8.count <= 8192 else { return .failure(.malformedToken) }
        // jwt-kit verifies with the key it holds whatever the header says; naming the algorithm is checked here so
        // `none` or RS256 tokens get a clear refusal.
        guard let header = Self.decodeSegment(parts[0]), case .object(let fields) = header else { return .failure(.malformedToken) }
        guard fields["alg"] == .string(Self.algorithm) else { return .failure(.invalidAlgorithm) }
        let claims: TokenClaims
        do {
            // Verified as any JSON object, so a claim of the wrong type is reported as invalid_claims rather than
            // lost in a decoding failure.
            claims = try TokenClaims(try await self.keys.verify(token, as: RawClaims.self).fields)
        } catch let error as JWTError {
            switch error.errorType {
            case .signatureVerificationFailed: return .failure(.invalidSignature)
            case .malformedToken: return .failure(.malformedToken)
            default: return .failure(.invalidClaims)
            }
        } catch is DecodingError {
            return .failure(.malformedToken)
        } catch {
            return .failure(.invalidClaims)
        }
        return self.check(claims, now: now)
    }

    private func check(_ claims: TokenClaims, now: Date) -> Result<User, AuthenticationFailure> {
        let leeway = Double(self.configuration.leeway.wholeMilliseconds) / 1000
        let now = now.timeIntervalSince1970
        guard let subject = claims.sub, let exp = claims.exp, exp.isFinite, Self.isValidSubject(subject) else {
            return .failure(.invalidClaims)
        }
        guard exp + leeway > now else { return .failure(.expiredToken) }
        if let nbf = claims.nbf {
            guard nbf.isFinite else { return .failure(.invalidClaims) }
            guard nbf - leeway <= now else { return .failure(.notYetValid) }
        }
        if let maxLifetime = self.configuration.maxLifetime {
            let limit = Double(maxLifetime.wholeMilliseconds) / 1000 + leeway
            let start = claims.iat.map { min($0, now) } ?? now
            guard exp - start <= limit, exp - now <= limit else { return .failure(.lifetimeTooLong) }
        }
        if let issuer = self.configuration.issuer, claims.iss != issuer { return .failure(.invalidIssuer) }
        if let audience = self.configuration.audience, !(claims.aud?.values.contains(audience) ?? false) {
            return .failure(.invalidAudience)
        }
        let username = claims.username.flatMap { $0.isEmpty || !Self.isValidSubject($0) ? nil : $0 }
        return .success(User(id: UserID(subject), username: username ?? subject))
    }

    /// A user id must be printable: it names log lines, rooms and queues.
    private static func isValidSubject(_ subject: String) -> Bool {
        !subject.isEmpty && subject.utf8.count <= 256
            && !subject.unicodeScalars.contains { $0.properties.generalCategory == .control || $0 == "\u{2028}" || $0 == "\u{2029}" }
    }

    private static func decodeSegment(_ segment: Substring) -> JSONValue? {
        var base64 = segment.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.utf8.count % 4) % 4)
        guard let data = Data(base64Encoded: base64) else { return nil }
        return try? JSONDecoder().decode(JSONValue.self, from: data)
    }

    /// Mints a token for `user` that expires after `lifetime`, with the configured issuer and audience.
    /// - Throws: `ChatError` `bad_request` when `lifetime` is over ``Configuration/maxLifetime``.
    public func token(for user: User, lifetime: Duration, now: Date = Date()) async throws(ChatError) -> String {
        if let maxLifetime = self.configuration.maxLifetime, lifetime > maxLifetime {
            throw ChatError(
                .badRequest,
                "a token may live at most \(maxLifetime.components.seconds) s (JWT_MAX_TTL); asked for \(lifetime.components.seconds) s"
            )
        }
        let claims = TokenClaims(
            sub: user.id.rawValue,
            exp: now.addingTimeInterval(Double(lifetime.wholeMilliseconds) / 1000).timeIntervalSince1970.rounded(.down),
            nbf: nil,
            iat: now.timeIntervalSince1970.rounded(.down),
            iss: self.configuration.issuer,
            aud: self.configuration.audience.map { .one($0) },
            username: user.username
        )
        do {
            return try await self.keys.sign(claims)
        } catch {
            throw ChatError(.badRequest, "could not sign a token: \(error)")
        }
    }
}

/// The claims chatd reads; every one optional so a missing claim is reported as such, not as a decoding failure.
private struct TokenClaims: JWTPayload {
    /// `aud`: one string or an array of them (RFC 7519 §4.1.3).
    enum Audience: Codable, Sendable {
        case one(String)
        case many([String])

        var values: [String] {
            switch self {
            case .one(let value): [value]
            case .many(let values): values
            }
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let one = try? container.decode(String.self) {
                self = .one(one)
            } else {
                self = .many(try container.decode([String].self))
            }
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .one(let value): try container.encode(value)
            case .many(let values): try container.encode(values)
            }
        }
    }

    var sub: String?
    var exp: Double?
    var nbf: Double?
    var iat: Double?
    var iss: String?
    var aud: Audience?
    var username: String?

    /// A claim is present with the wrong type.
    struct WrongType: Error {}

    init(sub: String?, exp: Double?, nbf: Double?, iat: Double?, iss: String?, aud: Audience?, username: String?) {
        (self.sub, self.exp, self.nbf, self.iat, self.iss, self.aud, self.username) = (sub, exp, nbf, iat, iss, aud, username)
    }

    /// Reads the claims from a verified payload; a claim of the wrong type throws ``WrongType``.
    init(_ fields: [String: JSONValue]) throws(WrongType) {
        func string(_ key: String) throws(WrongType) -> String? {
            switch fields[key] {
            case nil, .null?: return nil
            case .string(let value)?: return value
            default: throw WrongType()
            }
        }
        func number(_ key: String) throws(WrongType) -> Double? {
            switch fields[key] {
            case nil, .null?: return nil
            case .number(let value)?: return value
            default: throw WrongType()
            }
        }
        var audience: Audience?
        switch fields["aud"] {
        case nil, .null?: audience = nil
        case .string(let value)?: audience = .one(value)
        case .array(let values)?:
            audience = .many(try values.map { value throws(WrongType) in
                guard case .string(let string) = value else { throw WrongType() }
                return string
            })
        default: throw WrongType()
        }
        self.init(
            sub: try string("sub"), exp: try number("exp"), nbf: try number("nbf"), iat: try number("iat"),
            iss: try string("iss"), aud: audience, username: try string("username")
        )
    }

    /// The claims are checked by ``TokenAuthenticator`` with its own clock and settings.
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// A verified payload as JSON, before its claims are read.
private struct RawClaims: JWTPayload {
    var fields: [String: JSONValue]

    init(from decoder: any Decoder) throws { self.fields = try [String: JSONValue](from: decoder) }
    func encode(to encoder: any Encoder) throws { try self.fields.encode(to: encoder) }
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}
