public import ChatDomain
public import Foundation
import JWTKit

/// Why a token was refused; `rawValue` is the code clients see in `CONNECT_ERROR`'s `data.code`.
public enum AuthenticationFailure: String, Error, Sendable, Hashable, CustomStringConvertible {
    /// No token in the CONNECT auth payload nor in an `Authorization: Bearer` header.
    case missingToken = "missing_token"
    /// The token is not a well-formed JWT.
    case malformedToken = "malformed_token"
    /// The signature does not match the server's secret (a forged token, or one made with another secret).
    case invalidSignature = "invalid_signature"
    /// The token's `exp` has passed.
    case expiredToken = "token_expired"
    /// The token lacks `sub` or `exp`, or a claim has the wrong type.
    case invalidClaims = "invalid_claims"

    public var description: String {
        switch self {
        case .missingToken: "no token: send {\"token\": \"<jwt>\"} as the CONNECT auth payload or an Authorization: Bearer header"
        case .malformedToken: "the token is not a JWT (three base64url parts separated by dots)"
        case .invalidSignature: "the token's signature does not match this server's secret"
        case .expiredToken: "the token has expired; get a new one"
        case .invalidClaims: "the token needs a string 'sub' (the user id) and a numeric 'exp'"
        }
    }
}

/// Verifies and mints HS256 access tokens with one shared secret (jwt-kit).
public struct TokenAuthenticator: Sendable {
    private let keys: JWTKeyCollection

    /// An authenticator for `secret`; it must be at least 32 bytes (HS256 needs a key as long as its digest).
    public init(secret: String) async throws(ChatError) {
        guard secret.utf8.count >= 32 else {
            throw ChatError(.badRequest, "the JWT secret must be at least 32 bytes long (got \(secret.utf8.count)); set JWT_SECRET")
        }
        self.keys = JWTKeyCollection()
        await self.keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
    }

    /// The user a token names, or why it is refused.
    public func authenticate(_ token: String?) async -> Result<User, AuthenticationFailure> {
        guard let token, !token.isEmpty else { return .failure(.missingToken) }
        guard token.split(separator: ".", omittingEmptySubsequences: false).count == 3, token.utf8.count <= 8192 else {
            return .failure(.malformedToken)
        }
        do {
            let claims = try await self.keys.verify(token, as: VerifiedClaims.self)
            guard !claims.sub.value.isEmpty, claims.sub.value.utf8.count <= 256 else { return .failure(.invalidClaims) }
            let username = claims.username.flatMap { $0.isEmpty ? nil : $0 }
            return .success(User(id: UserID(claims.sub.value), username: username ?? claims.sub.value))
        } catch let error as JWTError {
            switch error.errorType {
            case .signatureVerificationFailed: return .failure(.invalidSignature)
            case .claimVerificationFailure: return .failure(error.failedClaim is ExpirationClaim ? .expiredToken : .invalidClaims)
            case .malformedToken: return .failure(.malformedToken)
            default: return .failure(.invalidClaims)
            }
        } catch is DecodingError {
            return .failure(.invalidClaims)
        } catch {
            return .failure(.malformedToken)
        }
    }

    /// Mints a token for `user` that expires after `lifetime`.
    public func token(for user: User, lifetime: Duration, now: Date = Date()) async throws(ChatError) -> String {
        let claims = VerifiedClaims(
            sub: SubjectClaim(value: user.id.rawValue),
            username: user.username,
            exp: ExpirationClaim(value: now.addingTimeInterval(Double(lifetime.wholeMilliseconds) / 1000))
        )
        do {
            return try await self.keys.sign(claims)
        } catch {
            throw ChatError(.badRequest, "could not sign a token: \(error)")
        }
    }
}

private struct VerifiedClaims: JWTPayload {
    var sub: SubjectClaim
    var username: String?
    var exp: ExpirationClaim

    func verify(using algorithm: some JWTAlgorithm) async throws {
        try self.exp.verifyNotExpired()
    }
}
