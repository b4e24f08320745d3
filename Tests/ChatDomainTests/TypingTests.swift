import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

@Suite("Typing indicators")
struct TypingTests {
    private static func typing(_ h: Harness, _ connection: ConnectionID) -> [TypingChange] {
        h.transport.events(of: connection).compactMap { event in
            if case .typing(let change) = event { change } else { nil }
        }
    }

    private static func configuration(ttl: Duration = .seconds(6)) -> ChatServiceConfiguration {
        var configuration = ChatServiceConfiguration()
        configuration.typingTTL = ttl
        return configuration
    }

    @Test("A start reaches the other participants once; without a refresh they get typing false when the TTL is up, not before")
    func startExpires() async throws {
        let clock = ManualMonotonicClock()
        try await withHarness(configuration: Self.configuration(), deadlines: clock) { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            let carol = await h.connect(Harness.carol)
            #expect(await h.service.typing(Harness.directChat, typing: true, from: alice) == nil)
            #expect(await h.service.typing(Harness.directChat, typing: true, from: alice) == nil, "a refresh")
            let started = TypingChange(chatID: Harness.directChat, userID: Harness.alice.id, typing: true)
            #expect(Self.typing(h, bob) == [started], "a refresh tells nobody again")
            #expect(Self.typing(h, alice).isEmpty && Self.typing(h, carol).isEmpty, "neither the typist nor a non-participant")

            clock.advance(by: .milliseconds(5_999))
            try await Task.sleep(for: .milliseconds(50))
            #expect(Self.typing(h, bob) == [started])
            clock.advance(by: .milliseconds(1))
            await eventually("bob to see alice stop typing") { Self.typing(h, bob).count == 2 }
            #expect(Self.typing(h, bob).last == TypingChange(chatID: Harness.directChat, userID: Harness.alice.id, typing: false))
        }
    }

    @Test("A refresh keeps the indicator up for another TTL; typing:stop ends it at once; a stop without a start says nothing")
    func refreshAndStop() async throws {
        let clock = ManualMonotonicClock()
        try await withHarness(configuration: Self.configuration(), deadlines: clock) { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            #expect(await h.service.typing(Harness.directChat, typing: false, from: alice) == nil)
            #expect(Self.typing(h, bob).isEmpty)
            _ = await h.service.typing(Harness.directChat, typing: true, from: alice)
            clock.advance(by: .seconds(4))
            _ = await h.service.typing(Harness.directChat, typing: true, from: alice)
            clock.advance(by: .seconds(4))
            try await Task.sleep(for: .milliseconds(50))
            #expect(Self.typing(h, bob).map(\.typing) == [true], "refreshed 4 s ago: still typing at 8 s")
            _ = await h.service.typing(Harness.directChat, typing: false, from: alice)
            #expect(Self.typing(h, bob).map(\.typing) == [true, false])
            clock.advance(by: .seconds(10))
            try await Task.sleep(for: .milliseconds(50))
            #expect(Self.typing(h, bob).map(\.typing) == [true, false], "no second stop when the old deadline passes")
        }
    }

    @Test("Closing the typist's last connection ends their indicators; closing one of two does not")
    func disconnectEndsTyping() async throws {
        let clock = ManualMonotonicClock()
        try await withHarness(configuration: Self.configuration(), deadlines: clock) { h in
            let alice = await h.connect(Harness.alice)
            let alicePhone = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            let carol = await h.connect(Harness.carol)
            _ = await h.service.typing(Harness.directChat, typing: true, from: alice)
            _ = await h.service.typing(Harness.groupChat, typing: true, from: alicePhone)
            await h.drop(alicePhone)
            #expect(Self.typing(h, bob).map(\.typing) == [true, true])
            await h.drop(alice)
            let stops = Self.typing(h, bob).filter { !$0.typing }.map(\.chatID.rawValue).sorted()
            #expect(stops == [Harness.directChat.rawValue, Harness.groupChat.rawValue])
            #expect(Self.typing(h, carol).map(\.typing) == [true, false])
        }
    }

    @Test("A flood of typing events is refused once with bad_request and then dropped; a participant check guards the chat")
    func floodAndRefusals() async throws {
        let clock = ManualMonotonicClock()
        var configuration = Self.configuration()
        configuration.typingRateLimit = RateLimit(rate: 1, burst: 3)
        try await withHarness(configuration: configuration, deadlines: clock) { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            let carol = await h.connect(Harness.carol)
            var answers: [ChatError.Code?] = []
            for index in 0..<8 {
                answers.append(await h.service.typing(Harness.directChat, typing: index % 2 == 0, from: alice)?.code)
            }
            #expect(answers == [nil, nil, nil, .badRequest, nil, nil, nil, nil])
            #expect(Self.typing(h, bob).map(\.typing) == [true, false, true], "only the three within the limit")
            // The bucket refills with time (the wall clock the limiter reads).
            h.clock.advance(by: 2)
            #expect(await h.service.typing(Harness.directChat, typing: false, from: alice) == nil)
            #expect(Self.typing(h, bob).map(\.typing) == [true, false, true, false])

            #expect(await h.service.typing(Harness.directChat, typing: true, from: carol)?.code == .notAParticipant)
            #expect(await h.service.typing("no-such-chat", typing: true, from: carol)?.code == .chatNotFound)
        }
    }
}
