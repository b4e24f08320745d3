/// A string identifier tagged with the kind of thing it names, so a user id cannot be passed where a chat id
/// is expected. Encoded in JSON as a plain string (the standard `RawRepresentable` coding).
public struct Identifier<Kind: IdentifierKind>: RawRepresentable, Hashable, Comparable, Sendable, Codable,
    CustomStringConvertible, ExpressibleByStringLiteral
{
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public var description: String { self.rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The kinds of thing an ``Identifier`` can name.
public protocol IdentifierKind: Sendable {}

/// Tag for ``UserID``.
public enum UserKind: IdentifierKind {}
/// Tag for ``ChatID``.
public enum ChatKind: IdentifierKind {}
/// Tag for ``ConnectionID``.
public enum ConnectionKind: IdentifierKind {}
/// Tag for ``NodeID``.
public enum NodeKind: IdentifierKind {}

/// The identifier of a user: the `sub` claim of their token, opaque to the domain.
public typealias UserID = Identifier<UserKind>
/// The identifier of a chat (a conversation with a fixed set of participants).
public typealias ChatID = Identifier<ChatKind>
/// The identifier of one client connection (one socket) held by a node.
public typealias ConnectionID = Identifier<ConnectionKind>
/// The identifier of a server node (one `chatd` process) that holds connections.
public typealias NodeID = Identifier<NodeKind>
