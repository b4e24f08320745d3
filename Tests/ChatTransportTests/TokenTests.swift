import ChatDomain
import ChatTransport
import Foundation
import JWTKit
import Testing

/// The token checks, on tokens made by hand: every claim a production deployment relies on.
@Suite("Access tokens")
struct TokenTests {
    static let secret = "token-test-secret-0123456789-abcdefghij"
    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    /// Any claims, signed HS256 (or `algorithm`) with `secret`.
    struct AnyClaims: JWTPayload {
        var fields: [String: JSONValue]
        func verify(using algorithm: some JWTAlgorithm) async throws {}
        init(_ fields: [String: JSONValue]) { self.fields = fields }
        init(from decoder: any Decoder) throws { self.fields = try [String: JSONValue](from: decoder) }
        func encode(to encoder: any Encoder) throws { try self.fields.encode(to: encoder) }
    }

    static func sign(_ fields: [String: JSONValue], digest: DigestAlgorithm = .sha256, secret: String = TokenTests.secret) async throws -> String {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: digest)
        return try await keys.sign(AnyClaims(fields))
    }

    static func claims(sub: JSONValue? = .string("alice"), lifetime: Double = 600, extra: [String: JSONValue] = [:]) -> [String: JSONValue] {
        var fields: [String: JSONValue] = ["exp": .number(Self.now.timeIntervalSince1970 + lifetime)]
        if let sub { fields["sub"] = sub }
        fields.merge(extra) { $1 }
        return fields
    }

    static func base64URL(_ text: String) -> String {
        Data(text.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    func authenticate(_ token: String, _ configure: (inout TokenAuthenticator.Configuration) -> Void = { _ in }) async throws
        -> Result<User, AuthenticationFailure>
    {
        var configuration = TokenAuthenticator.Configuration(secret: Self.secret)
        configure(&configuration)
        return try await TokenAuthenticator(configuration: configuration).authenticate(token, now: Self.now)
    }

    @Test("A valid token names its user")
    func valid() async throws {
        let token = try await Self.sign(Self.claims(extra: ["username": .string("Alice"), "iat": .number(Self.now.timeIntervalSince1970)]))
        let user = try await self.authenticate(token).get()
        #expect(user == User(id: "alice", username: "Alice"))
    }

    @Test("alg none and algorithms other than HS256 are refused as invalid_algorithm")
    func algorithms() async throws {
        let payload = Self.base64URL(#"{"sub":"alice","exp":\#(Self.now.timeIntervalSince1970 + 600)}"#)
        let none = Self.base64URL(#"{"alg":"none","typ":"JWT"}"#) + "." + payload + "."
        #expect(try await self.authenticate(none) == .failure(.invalidAlgorithm))
        let hs384 = try await Self.sign(Self.claims(), digest: .sha384, secret: Self.secret + Self.secret)
        #expect(try await self.authenticate(hs384) == .failure(.invalidAlgorithm))
        let forged = try await Self.sign(Self.claims(), secret: "another-secret-0123456789-abcdefghijkl")
        #expect(try await self.authenticate(forged) == .failure(.invalidSignature))
    }

    @Test("Missing or wrongly typed sub and exp, and user ids with control characters, are invalid_claims")
    func claims() async throws {
        for fields in [
            Self.claims(sub: nil),
            ["sub": .string("alice")],
            Self.claims(sub: .number(5)),
            Self.claims(sub: .string("")),
            Self.claims(sub: .string("ali\nce")),
            Self.claims(extra: ["exp": .string("tomorrow")]),
        ] {
            let token = try await Self.sign(fields)
            #expect(try await self.authenticate(token) == .failure(.invalidClaims), "\(fields)")
        }
    }

    @Test("exp, nbf and the lifetime cap are checked against the clock, with a small leeway")
    func times() async throws {
        let expired = try await Self.sign(Self.claims(lifetime: -120))
        #expect(try await self.authenticate(expired) == .failure(.expiredToken))
        let notYet = try await Self.sign(Self.claims(extra: ["nbf": .number(Self.now.timeIntervalSince1970 + 300)]))
        #expect(try await self.authenticate(notYet) == .failure(.notYetValid))
        let skewed = try await Self.sign(Self.claims(extra: ["nbf": .number(Self.now.timeIntervalSince1970 + 10)]))
        #expect(try await self.authenticate(skewed).map(\.id) == .success("alice"), "within the 30 s leeway")
        let year = try await Self.sign(Self.claims(lifetime: 365 * 86_400))
        #expect(try await self.authenticate(year) == .failure(.lifetimeTooLong))
        #expect(try await self.authenticate(year) { $0.maxLifetime = nil }.map(\.id) == .success("alice"))
        let longSinceIssued = try await Self.sign(
            Self.claims(lifetime: 3600, extra: ["iat": .number(Self.now.timeIntervalSince1970 - 90_000)])
        )
        #expect(try await self.authenticate(longSinceIssued) == .failure(.lifetimeTooLong), "exp - iat over the cap")
    }

    @Test("A configured issuer and audience must match")
    func issuerAndAudience() async throws {
        let configure: (inout TokenAuthenticator.Configuration) -> Void = { $0.issuer = "https://auth.example"; $0.audience = "chatd" }
        let right = try await Self.sign(Self.claims(extra: ["iss": .string("https://auth.example"), "aud": .array([.string("other"), .string("chatd")])]))
        #expect(try await self.authenticate(right, configure).map(\.id) == .success("alice"))
        let wrongIssuer = try await Self.sign(Self.claims(extra: ["iss": .string("https://evil.example"), "aud": .string("chatd")]))
        #expect(try await self.authenticate(wrongIssuer, configure) == .failure(.invalidIssuer))
        let noAudience = try await Self.sign(Self.claims(extra: ["iss": .string("https://auth.example")]))
        #expect(try await self.authenticate(noAudience, configure) == .failure(.invalidAudience))
        // Minted tokens carry both, and a lifetime over the cap is refused when minting.
        var configuration = TokenAuthenticator.Configuration(secret: Self.secret)
        configure(&configuration)
        let authenticator = try await TokenAuthenticator(configuration: configuration)
        let minted = try await authenticator.token(for: User(id: "bob", username: "Bob"), lifetime: .seconds(60), now: Self.now)
        #expect(await authenticator.authenticate(minted, now: Self.now).map(\.id) == .success("bob"))
        await #expect(throws: ChatError.self) { try await authenticator.token(for: User(id: "bob", username: "Bob"), lifetime: .seconds(90_000)) }
    }
}
