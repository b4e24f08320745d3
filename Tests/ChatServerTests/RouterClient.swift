import ChatTransport
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded

/// Sends requests straight to an application's router, in-process: no socket, no port.
///
/// What HummingbirdTesting's `.router` framework does, in the few lines chatd needs. HummingbirdTesting itself
/// links AsyncHTTPClient, swift-nio-ssl (a second BoringSSL) and NIOHTTP2 for its live client, which cost every
/// clean build about three minutes on the CI machine (measured: 175 s for that closure alone).
struct RouterClient: Sendable {
    /// One answer: status, headers and the whole body.
    struct Response: Sendable {
        var status: HTTPResponse.Status
        var headers: HTTPFields
        var body: ByteBuffer
    }

    let responder: RouterResponder<ChatRequestContext>
    let logger: Logger

    init(_ application: Application<RouterResponder<ChatRequestContext>>) {
        self.responder = application.responder
        self.logger = application.logger
    }

    /// Sends one request through the router and collects the response, as a client on the wire would see it.
    func execute(uri: String, method: HTTPRequest.Method, headers: HTTPFields = [:], body: ByteBuffer? = nil) async throws -> Response {
        var headers = headers
        if let body { headers[.contentLength] = String(body.readableBytes) }
        let request = Request(
            head: HTTPRequest(method: method, scheme: "http", authority: "localhost", path: uri, headerFields: headers),
            body: RequestBody(buffer: body ?? ByteBuffer())
        )
        let context = ChatRequestContext(source: ApplicationRequestContextSource(channel: EmbeddedChannel(), logger: self.logger))
        let response: Hummingbird.Response
        do {
            response = try await self.responder.respond(to: request, context: context)
        } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        } catch {
            response = Hummingbird.Response(status: .internalServerError)  // what Hummingbird's server answers
        }
        let collected = Collector()
        try await response.body.write(collected)
        return Response(status: response.status, headers: response.headers, body: collected.buffer.withLockedValue { $0 })
    }

    /// Gathers a response body.
    private final class Collector: ResponseBodyWriter, Sendable {
        let buffer = NIOLockedValueBox(ByteBuffer())

        func write(_ buffer: ByteBuffer) async throws {
            var buffer = buffer
            self.buffer.withLockedValue { _ = $0.writeBuffer(&buffer) }
        }

        func finish(_ trailingHeaders: HTTPFields?) async throws {}
    }
}
