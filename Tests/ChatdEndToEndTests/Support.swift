import ChatDomain
import ChatScenarioKit
import ChatTransport
import Foundation
import Testing

#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// A chatd process built from this package.
final class ChatdProcess: @unchecked Sendable {
    static let secret = "end-to-end-secret-0123456789-abcdefghij"
    static var binary: URL {
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("chatd")
        if FileManager.default.isExecutableFile(atPath: beside.path) { return beside }
        return repository.appendingPathComponent(".build/debug/chatd")
    }

    private(set) var environment: [String: String]
    /// Where chatd writes its port once listening (a new file for every start).
    private let portFile: URL
    /// The process's own `DATA_DIR` (its embedded SQLite file), kept across restarts, removed at clean-up.
    let dataDirectory: URL
    private(set) var child: ChildProcess
    private(set) var port = 0
    /// Logs of earlier runs (restarts), oldest first.
    private(set) var previousLogs = ""

    var url: String { "http://127.0.0.1:\(self.port)" }
    var log: String { self.previousLogs + self.child.stderr }

    /// Starts chatd with `environment` (over a clean one: PORT 0, the test secret, LOG_LEVEL info).
    init(environment: [String: String] = [:]) async throws {
        self.portFile = FileManager.default.temporaryDirectory.appendingPathComponent("chatd-port-\(UUID().uuidString)")
        self.dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("chatd-data-\(UUID().uuidString)")
        var base = ["PORT": "0", "PORT_FILE": self.portFile.path, "DATA_DIR": self.dataDirectory.path, "HOST": "127.0.0.1", "JWT_SECRET": Self.secret, "LOG_LEVEL": "info", "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"]
        // Every test client runs on 127.0.0.1 and some send 1,000 messages in a burst: the per-address and
        // per-user limits are off unless a test sets them (they are tested in-process, and their defaults once
        // end to end).
        for (name, value) in ["SEND_RATE_PER_USER": "0", "FANOUT_RATE_PER_USER": "0", "HANDSHAKE_RATE_PER_ADDRESS": "0", "MAX_SESSIONS_PER_ADDRESS": "0"] {
            base[name] = value
        }
        base.merge(environment) { $1 }
        self.environment = base
        self.child = try ChildProcess(Self.binary, arguments: ["serve"], environment: base, label: "chatd")
        try await self.waitUntilListening()
    }

    /// Waits for the port chatd writes to `PORT_FILE` once it listens (the log's wording is for people).
    private func waitUntilListening() async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if let text = try? String(contentsOf: self.portFile, encoding: .utf8), text.hasSuffix("\n"),
                let port = Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
            {
                self.port = port
                return
            }
            if let status = self.child.exitStatus {
                throw TestServerError("chatd exited with status \(status) before listening:\n\(self.child.stderr)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestServerError("chatd did not listen within 30 s:\n\(self.child.stderr)")
    }

    /// `kill -9`, as a crash.
    func crash() async {
        self.child.signal(SIGKILL)
        _ = await self.child.wait(timeout: .seconds(10))
    }

    /// SIGTERM; returns the exit status (nil when it did not stop within `timeout`).
    func stop(timeout: Duration = .seconds(20)) async -> Int32? {
        self.child.signal(SIGTERM)
        return await self.child.wait(timeout: timeout)
    }

    /// Starts chatd again with the same environment, changed by `changes` (a nil value unsets), on a new port.
    func restart(changing changes: [String: String?] = [:]) async throws {
        if self.child.exitStatus == nil { await self.crash() }
        for (name, value) in changes { self.environment[name] = value }
        self.previousLogs += self.child.stderr
        await self.child.cleanUp()
        try? FileManager.default.removeItem(at: self.portFile)
        self.child = try ChildProcess(Self.binary, arguments: ["serve"], environment: self.environment, label: "chatd")
        try await self.waitUntilListening()
    }

    func token(_ user: String, username: String? = nil) async throws -> String {
        let authenticator = try await TokenAuthenticator(secret: Self.secret)
        return try await authenticator.token(for: User(id: UserID(user), username: username ?? user.capitalized), lifetime: .seconds(3600))
    }

    /// An HTTP request to chatd: the status and the decoded JSON body.
    func http(_ method: String, _ path: String, token: String? = nil, body: JSONValue? = nil) async throws -> (status: Int, json: JSONValue?) {
        var request = URLRequest(url: URL(string: self.url + path)!)
        request.httpMethod = method
        request.timeoutInterval = 15
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let body {
            request.httpBody = try JSONEncoder().encode(body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, try? JSONDecoder().decode(JSONValue.self, from: data))
    }

    func cleanUp() async {
        await self.child.cleanUp()
        try? FileManager.default.removeItem(at: self.portFile)
        try? FileManager.default.removeItem(at: self.dataDirectory)
    }
}

/// Runs `body` with chatd, then stops it whatever happened.
func withChatd(environment: [String: String] = [:], _ body: (ChatdProcess) async throws -> Void) async throws {
    let chatd = try await ChatdProcess(environment: environment)
    do {
        try await body(chatd)
    } catch {
        Issue.record("chatd's log:\n\(chatd.log.suffix(6000))")
        await chatd.cleanUp()
        throw error
    }
    await chatd.cleanUp()
}

/// The python-socketio remote control (`Clients/driver.py`).
final class ClientDriver: OwnedTestServer, @unchecked Sendable {
    let child: ChildProcess
    let port: Int

    static var python: URL { repository.appendingPathComponent(".venv/bin/python") }

    /// Starts the driver; nil when python-socketio is missing and this is not CI.
    static func start() async throws -> ClientDriver? {
        guard FileManager.default.isExecutableFile(atPath: self.python.path) else {
            _ = try TestServers.missing("python-socketio is not installed in .venv; run ./scripts/test.sh once")
            return nil
        }
        let child = try ChildProcess(
            self.python,
            arguments: [repository.appendingPathComponent("Tests/ChatdEndToEndTests/Clients/driver.py").path],
            environment: ProcessInfo.processInfo.environment.merging(["PYTHONUNBUFFERED": "1"]) { $1 },
            label: "driver"
        )
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if let line = child.stdout.split(separator: "\n").first, let port = Int(line) {
                return ClientDriver(child: child, port: port)
            }
            if child.exitStatus != nil {
                if try TestServers.missing("the client driver did not start: \(child.stderr)") == nil { return nil }
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestServerError("the client driver did not start within 20 s: \(child.stderr)")
    }

    private init(child: ChildProcess, port: Int) {
        self.child = child
        self.port = port
    }

    /// Runs `command` for a user; throws what the client raised.
    @discardableResult
    func callAsFunction(_ command: String, _ body: [String: JSONValue]) async throws -> JSONValue {
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(self.port)/\(command)")!)
        request.httpMethod = "POST"
        request.timeoutInterval = 120
        request.httpBody = try JSONEncoder().encode(JSONValue.object(body))
        let (data, _) = try await URLSession.shared.data(for: request)
        guard case .object(let reply) = try JSONDecoder().decode(JSONValue.self, from: data) else {
            throw TestServerError("driver answered \(String(decoding: data, as: UTF8.self))")
        }
        guard reply["ok"] == .bool(true) else {
            throw TestServerError("client \(body["user"] ?? .null) failed to \(command): \(reply["error"] ?? .null)")
        }
        return reply["result"] ?? .null
    }

    /// Connects `user` to `chatd`, as the driver's client `device` (default: the user's name; another name is a
    /// second device of the same user, addressed by that name in the other calls).
    func connect(_ user: String, to chatd: ChatdProcess, device: String? = nil, ackDelayMs: Int = 0) async throws {
        try await self("connect", [
            "user": .string(device ?? user), "url": .string(chatd.url), "token": .string(try await chatd.token(user)),
            "ackDelayMs": .number(Double(ackDelayMs)),
        ])
    }

    /// Sends as `user`; returns the ack.
    func send(_ user: String, chat: String, _ content: String) async throws -> [String: JSONValue] {
        let ack = try await self("send", ["user": .string(user), "chatId": .string(chat), "content": .string(content)])
        guard case .object(let object) = ack else { throw TestServerError("no ack object: \(ack)") }
        return object
    }

    /// Emits `event` with `payload` as `user` and returns its acknowledgement (`{}` when `ack` is false).
    @discardableResult
    func emit(_ user: String, _ event: String, _ payload: JSONValue, ack: Bool = true) async throws -> JSONValue {
        try await self("emit", ["user": .string(user), "event": .string(event), "payload": payload, "ack": .bool(ack)])
    }

    /// The payloads of events called `name` that `user` received.
    func events(_ user: String, _ name: String) async throws -> [JSONValue] {
        guard case .array(let events) = try await self("events", ["user": .string(user), "name": .string(name)]) else { return [] }
        return events.compactMap { event in
            if case .array(let pair) = event, pair.count == 2 { return pair[1] }
            return nil
        }
    }

    /// The contents of the messages `user` received, in order.
    func received(_ user: String) async throws -> [String] {
        try await self.events(user, "message:received").compactMap { if case .object(let m) = $0, case .string(let c)? = m["content"] { c } else { nil } }
    }

    func shutDown() async { await self.child.cleanUp() }
}

/// Runs `body` with the client driver; returns at once when it is not available by hand.
func withDriver(_ body: (ClientDriver) async throws -> Void) async throws {
    try await withTestServer({ try await ClientDriver.start() }, body)
}

extension JSONValue {
    subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    var string: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    var array: [JSONValue]? {
        if case .array(let value) = self { return value }
        return nil
    }
}

// Literals for the tests' JSON bodies and expectations.
extension JSONValue: ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral
{
    init(stringLiteral value: String) { self = .string(value) }
    init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    init(dictionaryLiteral elements: (String, JSONValue)...) { self = .object(Dictionary(uniqueKeysWithValues: elements)) }
    init(integerLiteral value: Int) { self = .number(Double(value)) }
    init(booleanLiteral value: Bool) { self = .bool(value) }
}
