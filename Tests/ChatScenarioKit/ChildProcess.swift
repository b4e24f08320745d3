public import Foundation

/// A child process with its output in files, its exit status, and signals.
public final class ChildProcess: @unchecked Sendable {
    // `process` is set up once in init; the exit status arrives from Foundation's termination handler.
    public let process = Process()
    public let directory: URL
    private let status = Locked<Int32?>(nil)

    public var stdoutURL: URL { self.directory.appendingPathComponent("stdout") }
    public var stderrURL: URL { self.directory.appendingPathComponent("stderr") }

    public init(_ executable: URL, arguments: [String], environment: [String: String], label: String) throws {
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: self.stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: self.stderrURL.path, contents: nil)
        self.process.executableURL = executable
        self.process.arguments = arguments
        self.process.environment = environment
        self.process.standardInput = FileHandle.nullDevice
        self.process.standardOutput = try FileHandle(forWritingTo: self.stdoutURL)
        self.process.standardError = try FileHandle(forWritingTo: self.stderrURL)
        let status = self.status
        self.process.terminationHandler = { process in
            let code = process.terminationStatus
            status.withLock { $0 = code }
        }
        try self.process.run()
    }

    public var stdout: String { (try? String(contentsOf: self.stdoutURL, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOf: self.stderrURL, encoding: .utf8)) ?? "" }
    public var exitStatus: Int32? { self.status.value }

    public func signal(_ signal: Int32) { kill(self.process.processIdentifier, signal) }

    /// Waits for the process to exit, at most `timeout`; nil if it is still running.
    public func wait(timeout: Duration) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let status = self.exitStatus { return status }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return self.exitStatus
    }

    /// Kills the process if it still runs and removes its files.
    public func cleanUp() async {
        if self.exitStatus == nil {
            self.signal(SIGKILL)
            _ = await self.wait(timeout: .seconds(5))
        }
        try? FileManager.default.removeItem(at: self.directory)
    }
}
