import ArgumentParser
import ChatBrokerAMQP
import ChatDomain
import ChatServer
import ChatTransport
import Foundation
import Logging

@main
struct Chatd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chatd",
        abstract: "Real-time chat delivery over Socket.IO that never loses a message while a user is offline.",
        discussion: """
            Every flag mirrors an environment variable (RABBITMQ_HOST, REDIS_HOST, MONGODB_URI, JWT_SECRET, ...). \
            With no RabbitMQ, Redis or MongoDB configured, chatd runs on in-memory adapters.
            """,
        subcommands: [Serve.self, Token.self, QueueInfo.self, Reencrypt.self],
        defaultSubcommand: Serve.self
    )
}

/// Reads the settings or exits with a message that names the bad variable.
func loadSettings(_ flags: ConfigurationFlags) throws -> ChatServerSettings {
    do {
        return try ChatServerSettings.resolve(flags: flags.values, environment: ProcessInfo.processInfo.environment)
    } catch {
        throw ValidationError("chatd: \(error.description)")
    }
}

/// `chatd token`: mints a development access token with the configured secret.
struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an access token for a user, signed with JWT_SECRET.")

    @Option(help: "The user id (the token's sub).") var user: String
    @Option(help: "The display name (default: the user id).") var username: String?
    @Option(help: "Lifetime in seconds (default 86400).") var ttl: Int = 86_400
    @OptionGroup var flags: ConfigurationFlags

    func validate() throws {
        guard !self.user.isEmpty else { throw ValidationError("--user must not be empty") }
        guard self.ttl > 0 else { throw ValidationError("--ttl must be positive") }
    }

    func run() async throws {
        let settings = try loadSettings(self.flags)
        if settings.jwtSecretIsDefault {
            FileHandle.standardError.write(Data("chatd: JWT_SECRET is not set; signing with the development secret\n".utf8))
        }
        let authenticator = try await TokenAuthenticator(configuration: settings.tokens)
        let token = try await authenticator.token(for: User(id: UserID(self.user), username: self.username ?? self.user), lifetime: .seconds(self.ttl))
        print(token)
    }
}

/// `chatd queue-info`: the offline queue depths in RabbitMQ.
struct QueueInfo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue-info",
        abstract: "Print queue depths from RabbitMQ (one user's offline queue, one node's inbox, or the dead-letter and delivery queues)."
    )

    @Option(help: "A user id: print that user's offline queue.") var user: String?
    @Option(help: "A node id: print that node's inbox (several nodes).") var node: String?
    @OptionGroup var flags: ConfigurationFlags

    func run() async throws {
        let settings = try loadSettings(self.flags)
        guard let amqp = settings.rabbitMQ else {
            throw ValidationError(
                "chatd queue-info reads RabbitMQ, and RABBITMQ_HOST is not set: in embedded mode the queue lives inside the serving chatd (see its /metrics)"
            )
        }
        var logger = Logger(label: "chatd.queue-info")
        logger.logLevel = .error
        let queue = RabbitMQMessageQueue(configuration: amqp, logger: logger)
        if let user = self.user {
            let depth = try await queue.depth(for: UserID(user))
            print("offline_messages.\(user)\tready=\(depth.ready)\tconsumers=\(depth.consumers)")
        } else if let node = self.node {
            if let depth = try await queue.inboxDepth(of: NodeID(node)) {
                print("chatd.node.\(node)\tready=\(depth.ready)\tconsumers=\(depth.consumers)")
            } else {
                print("chatd.node.\(node)\tabsent")
            }
        } else {
            print("offline_messages_dead\tready=\(try await queue.deadLetterDepth())")
            print("message_delivery\tready=\(try await queue.deliveryEventDepth())")
        }
        await queue.close()
    }
}

/// `chatd reencrypt`: re-seals stored messages under the current encryption key, so an old key can be retired.
struct Reencrypt: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Re-seal every stored message under ENCRYPTION_KEY (resumable); afterwards the keys in ENCRYPTION_OLD_KEYS can be retired."
    )

    @Option(help: "Messages read and re-sealed per step (default 500).") var batch: Int = 500
    @OptionGroup var flags: ConfigurationFlags

    func validate() throws {
        guard self.batch >= 1, self.batch <= 100_000 else { throw ValidationError("--batch must be from 1 to 100000") }
    }

    func run() async throws {
        let settings = try loadSettings(self.flags)
        var logger = Logger(label: "chatd.reencrypt")
        logger.logLevel = .warning
        let stderr = FileHandle.standardError
        do {
            let report = try await ChatServer.reencrypt(settings: settings, batch: self.batch, logger: logger) { report in
                stderr.write(Data("reencrypt: \(report.examined) messages read, \(report.resealed) re-sealed, \(report.unreadable) unreadable\n".utf8))
            }
            print("re-sealed \(report.resealed) of \(report.examined) messages under key \(settings.sealer?.currentKeyID ?? "?"); \(report.unreadable) could not be opened")
            if report.unreadable > 0 {
                throw ExitCode(3)
            }
        } catch let error as ChatServerSettings.Invalid {
            throw ValidationError("chatd: \(error.description)")
        }
    }
}
