public import Hummingbird
public import HummingbirdWebSocket
public import NIOCore

/// The request context for a router that serves chatd's endpoints: WebSocket upgrades, and the peer's address,
/// which the per-address session limits need (a context without it gets no per-address limits).
public struct ChatRequestContext: RequestContext, WebSocketRequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let webSocket: WebSocketHandlerReference<Self>
    /// The connected peer (a proxy's address when there is one; see ``SocketIOConfiguration/trustedProxies``).
    public let remoteAddress: SocketAddress?
    /// The connection's channel: an upgraded WebSocket's session handler joins its pipeline.
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.webSocket = .init()
        self.remoteAddress = source.channel.remoteAddress
        self.channel = source.channel
    }
}
