import ArgumentParser
import ChatServer
import Logging

/// `chatd serve`: the server.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve Socket.IO, the HTTP API, health and metrics (the default).")

    @OptionGroup var flags: ConfigurationFlags

    func run() async throws {
        let settings = try loadSettings(self.flags)
        let level = settings.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "chatd")
        settings.announce(to: logger)
        try await ChatServer.build(settings: settings, logger: logger).run()
        logger.notice("chatd stopped")
    }
}
