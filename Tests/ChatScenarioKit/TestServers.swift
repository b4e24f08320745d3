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

    /// A loopback TCP port no socket holds right now (the kernel's pick for a socket bound to port 0), for a test
    /// server to listen on; a random pick could land on another test's server.
    public static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return Int.random(in: 20_000...30_000) }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { return Int.random(in: 20_000...30_000) }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// The lowest port of the kernel's ephemeral range (`ip_local_port_range`), from which outgoing connections take
    /// their local ports; 32768 when it cannot be read.
    public static var ephemeralPortsStart: Int {
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
        return range.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32_768
    }

    /// Whether a listening socket could bind `port` on loopback right now. Checked without `SO_REUSEADDR`, so a port
    /// that a closed connection still holds in TIME_WAIT counts as taken: `epmd` refuses such a port ("there is
    /// already a epmd running"), and a test suite that made thousands of connections leaves many.
    public static func isFree(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// Runs `work`, which blocks (a child process it waits for), on a thread of its own, so that it never holds one
    /// of the cooperative pool's threads (two here: two blocked ones stall every test of the process).
    public static func offPool<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            Thread { continuation.resume(with: Result(catching: work)) }.start()
        }
    }

    /// Whether the child `pid` exited; reaps it. (Foundation's `Process.isRunning` is not relied on.)
    public static func hasExited(_ pid: Int32) -> Bool {
        var status: Int32 = 0
        let result = waitpid(pid, &status, WNOHANG)
        return result == pid || (result == -1 && errno == ECHILD)
    }

    /// The ids of `pid`'s descendants (its children, their children, ...), deepest first, read from /proc.
    public static func descendants(of pid: Int32) -> [Int32] {
        var children: [Int32: [Int32]] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let process = Int32(entry),
                let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                let end = stat.lastIndex(of: ")")
            else { continue }
            // `pid (comm) state ppid ...`; the command may hold spaces and parentheses, so read after the last ')'.
            let fields = stat[stat.index(after: end)...].split(separator: " ")
            guard fields.count > 1, let parent = Int32(fields[1]) else { continue }
            children[parent, default: []].append(process)
        }
        var result: [Int32] = []
        func visit(_ parent: Int32) {
            for child in children[parent] ?? [] {
                visit(child)
                result.append(child)
            }
        }
        visit(pid)
        return result
    }

    /// Stops `pid`, a child of this process, and every process it started: the descendants first, deepest first,
    /// so that each is reaped by its own parent (a launcher shell waiting for its VM) rather than orphaned, then
    /// `pid` itself, which is reaped here. Only these processes are signalled, by id.
    public static func stopTree(_ pid: Int32, timeout: Duration = .seconds(10)) async {
        let deadline = ContinuousClock.now + timeout
        var remaining = Self.descendants(of: pid)
        for descendant in remaining { kill(descendant, SIGKILL) }
        while !remaining.isEmpty, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
            remaining = remaining.filter { Self.isRunning($0) }
        }
        if !Self.hasExited(pid) { kill(pid, SIGKILL) }
        while !Self.hasExited(pid), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Whether `pid` (not necessarily a child of this process) still runs; a zombie does not.
    static func isRunning(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let end = stat.lastIndex(of: ")") else {
            return false
        }
        return stat[stat.index(after: end)...].split(separator: " ").first != "Z"
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
