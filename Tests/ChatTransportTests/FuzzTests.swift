import ChatDomain
import ChatScenarioKit
@testable import ChatTransport
import Foundation
import Logging
import Testing

/// Property-based fuzzing of everything a client's bytes reach before and after authentication: the Engine.IO
/// and Socket.IO decoders, the hot-path decoders of `message:send` and client ACKs, the token check, and the whole
/// inbound path of a connected session. Inputs are random Unicode, random bytes, and mutations of the corpus in
/// `FuzzCorpus/` (one input per file; add any input that ever broke something). Deterministic per seed: a failure
/// prints its seed, and `FUZZ_SEED=<seed> swift test --filter Fuzz` replays it; `FUZZ_INPUTS` sets how many.
@Suite("Fuzzing the inbound path")
struct FuzzTests {
    static let corpusDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("FuzzCorpus")

    static func corpus() throws -> [String] {
        let files = try FileManager.default.contentsOfDirectory(at: Self.corpusDirectory, includingPropertiesForKeys: nil)
        return try files.sorted { $0.path < $1.path }.map { String(decoding: try Data(contentsOf: $0), as: UTF8.self) }
    }

    static var seed: UInt64 {
        ProcessInfo.processInfo.environment["FUZZ_SEED"].flatMap { UInt64($0) } ?? UInt64(Date().timeIntervalSince1970 * 1000)
    }

    static var inputCount: Int {
        ProcessInfo.processInfo.environment["FUZZ_INPUTS"].flatMap { Int($0) } ?? 20_000
    }

    @Test("The bytes that once crashed the server are refused with an error", arguments: ["万", "4万", "42万", "٣", "4٣", "½", "40万"])
    func crashRegression(input: String) {
        // Either the Engine.IO packet is refused, or the Socket.IO packet inside it is.
        guard let packets = try? EngineIOPacket.decodePayload(input) else { return }
        for packet in packets {
            #expect(throws: CodecError.self) { try SocketIOPacket.decode(packet.text) }
            #expect(SocketIOServer.fastSend(packet.text).map { _ in true } == nil && SocketIOServer.fastAck(packet.text) == nil)
        }
    }

    @Test("Random Unicode, random bytes and corpus mutations never crash a decoder")
    func decoders() async throws {
        let seed = Self.seed
        var generator = FuzzGenerator(seed: seed, corpus: try Self.corpus())
        let authenticator = try await TokenAuthenticator(secret: LiveServer.secret)
        var refused = 0
        for index in 0..<Self.inputCount {
            // A long loop that never suspends holds one of the cooperative pool's two threads for seconds, and the
            // timing of every other test in the process suffers: let them run now and then.
            if index.isMultiple(of: 200) { await Task.yield() }
            let input = generator.next()
            if (try? EngineIOPacket.decodePayload(input)) == nil { refused += 1 }
            _ = try? EngineIOPacket.decode(Substring(input))
            let packet = try? SocketIOPacket.decode(input)
            _ = SocketIOServer.fastAck(input)
            _ = SocketIOServer.fastSend(input)
            if let arguments = packet?.eventNameAndArguments?.arguments {
                _ = SocketIOServer.sendRequest(from: arguments)
            }
            _ = LogSafe.value(input)
            if index.isMultiple(of: 20) {
                // Tokens: the input as a token, and as the payload of a well-formed but unsigned one.
                _ = await authenticator.authenticate(input)
                _ = await authenticator.authenticate("eyJhbGciOiJIUzI1NiJ9." + Base64URL.encode(Array(input.utf8)) + ".c2ln")
            }
        }
        #expect(refused > 0, "seed \(seed): mutations were refused, not all accepted")
    }

    @Test("A connected session fed random packets keeps serving, and every refusal is answered")
    func inboundPath() async throws {
        let seed = Self.seed
        let corpus = try Self.corpus()
        try await withLiveServer { live in
            var generator = FuzzGenerator(seed: seed, corpus: corpus)
            let token = try await live.token(Harness.alice)
            var session = try #require(await Self.connectedSession(live.server, token: token))
            let inputs = Self.inputCount / 4
            for _ in 0..<inputs {
                let input = generator.next()
                switch Result(catching: { () throws(CodecError) in try EngineIOPacket.decodePayload(input) }) {
                case .success(let packets):
                    for packet in packets { await live.server.receive(packet, on: session) }
                case .failure(let error):
                    live.server.reject(on: session, error)
                }
                // Random packets close sessions (a CLOSE, a full buffer); carry on with a new one.
                if session.isClosed {
                    session = try #require(await Self.connectedSession(live.server, token: token))
                } else {
                    _ = session.takeBuffered(maxBytes: .max)
                }
            }
            // Still serving: a fresh client connects and sends.
            let client = try #require(await Self.connectedSession(live.server, token: try await live.token(Harness.bob)))
            await live.server.receive(EngineIOPacket(.message, #"21["message:send",{"chatId":"chat-ab","content":"after"}]"#), on: client)
            let answers = client.takeBuffered(maxBytes: .max)
            #expect(answers.contains { $0.hasPrefix("431[{") && $0.contains("\"messageId\"") }, "seed \(seed): \(answers)")
        }
    }

    /// A polling session with a Socket.IO connection for `token`, its outbound buffer emptied.
    static func connectedSession(_ server: SocketIOServer, token: String) async -> EngineSession? {
        guard let session = try? server.openSession(transport: .polling, bearerToken: nil).get() else { return nil }
        await server.receive(EngineIOPacket(.message, "0{\"token\":\"\(token)\"}"), on: session)
        for _ in 0..<100 where session.socket?.engineKnows != true { try? await Task.sleep(for: .milliseconds(5)) }
        _ = session.takeBuffered(maxBytes: .max)
        return session.isClosed ? nil : session
    }
}

/// Inputs for the fuzz tests: one third random Unicode (every plane, controls, digits of other scripts), one third
/// random bytes read as UTF-8, one third mutations and splices of the corpus.
struct FuzzGenerator {
    private var state: UInt64
    private let corpus: [String]
    /// Characters that steer inputs toward the packet grammar.
    private static let grammar: [Unicode.Scalar] = Array("0123456789[]{}\",:/\\-b=\u{1e}\u{0}".unicodeScalars)
    /// Digits of other scripts and number-like characters (`wholeNumberValue` reads them).
    private static let numeric: [Unicode.Scalar] = Array("万٣½१௫〇Ⅻ㊿𝟗".unicodeScalars)

    init(seed: UInt64, corpus: [String]) {
        self.state = seed
        self.corpus = corpus.isEmpty ? ["42[\"x\"]"] : corpus
    }

    /// SplitMix64.
    private mutating func random() -> UInt64 {
        self.state &+= 0x9E37_79B9_7F4A_7C15
        var z = self.state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    private mutating func below(_ bound: Int) -> Int { Int(self.random() % UInt64(max(bound, 1))) }

    private mutating func scalar() -> Unicode.Scalar {
        switch self.below(6) {
        case 0: return Self.grammar[self.below(Self.grammar.count)]
        case 1: return Self.numeric[self.below(Self.numeric.count)]
        case 2: return Unicode.Scalar(UInt8(self.below(0x80)))
        default:
            while true {
                if let scalar = Unicode.Scalar(UInt32(self.below(0x11_0000))) { return scalar }
            }
        }
    }

    mutating func next() -> String {
        switch self.below(3) {
        case 0:
            var text = String.UnicodeScalarView()
            for _ in 0..<self.below(40) { text.append(self.scalar()) }
            return String(text)
        case 1:
            return String(decoding: (0..<self.below(40)).map { _ in UInt8(truncatingIfNeeded: self.random()) }, as: UTF8.self)
        default:
            var scalars = Array(self.corpus[self.below(self.corpus.count)].unicodeScalars)
            for _ in 0...self.below(4) {
                let position = self.below(scalars.count + 1)
                switch self.below(5) {
                case 0 where !scalars.isEmpty: scalars.remove(at: min(position, scalars.count - 1))
                case 1: scalars.insert(self.scalar(), at: position)
                case 2 where !scalars.isEmpty: scalars[min(position, scalars.count - 1)] = self.scalar()
                case 3: scalars = Array(scalars.prefix(position))
                default: scalars.insert(contentsOf: self.corpus[self.below(self.corpus.count)].unicodeScalars, at: position)
                }
            }
            var text = String.UnicodeScalarView()
            text.append(contentsOf: scalars)
            return String(text)
        }
    }
}

enum Base64URL {
    static func encode(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}
