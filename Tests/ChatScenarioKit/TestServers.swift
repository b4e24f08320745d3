import Foundation

/// A test's own server could not be started or used.
public struct TestServerError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Server processes that integration tests start on loopback and stop again.
public enum TestServers {
    /// What to do when a server a test needs is not installed: fail in CI (`CI` set), and, run by hand, say why
    /// and tell the caller to return early (nil).
    public static func missing(_ message: String) throws -> Void? {
        if ProcessInfo.processInfo.environment["CI"] != nil { throw TestServerError(message) }
        print("SKIPPED (run by hand without the server): \(message)")
        return nil
    }

    /// Whether the child `pid` exited; reaps it. (Foundation's `Process.isRunning` is not relied on.)
    public static func hasExited(_ pid: Int32) -> Bool {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        return result == pid || (result == -1 && errno == ECHILD)
    }

    /// Kills every process whose command line contains one of `patterns` (`pkill -9 -f`).
    public static func kill(matching patterns: [String]) {
        for pattern in patterns {
            let kill = Process()
            kill.executableURL = URL(fileURLWithPath: "/usr/bin/pkill")
            kill.arguments = ["-9", "-f", pattern]
            try? kill.run()
            kill.waitUntilExit()
        }
    }
}

/// A server process a test started and must stop.
public protocol OwnedTestServer: AnyObject, Sendable {
    /// Closes the clients made for it and stops the server.
    func shutDown() async
}

/// Runs `body` with a server from `start`, then shuts it down whatever happened; returns at once when `start`
/// gives nil (a server missing when run by hand).
public func withTestServer<Server: OwnedTestServer>(
    _ start: () async throws -> Server?,
    _ body: (Server) async throws -> Void
) async throws {
    guard let server = try await start() else { return }
    do {
        try await body(server)
    } catch {
        await server.shutDown()
        throw error
    }
    await server.shutDown()
}
