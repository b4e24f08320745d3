import ChatDomain
import ChatScenarioKit
import Foundation
import Testing

/// What a sender is told when a send is rejected, and that a rejected send leaves no trace.
@Suite("Send validation")
struct SendValidationTests {
    private func rejection(
        _ request: SendMessageRequest,
        configuration: ChatServiceConfiguration = .init(),
        prepare: @Sendable (Harness) async throws -> Void = { _ in }
    ) async throws -> (ChatError?, [OutboundEvent], Int) {
        let outcome = Locked<(ChatError?, [OutboundEvent], Int)>((nil, [], 0))
        try await withHarness(configuration: configuration) { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            try await prepare(h)
            let result = await h.service.send(request, from: alice)
            let error: ChatError? = if case .failure(let error) = result { error } else { nil }
            let events = h.transport.events(of: alice).filter { if case .messageError = $0 { true } else { false } }
            outcome.withLock { $0 = (error, events, h.contents(of: bob).count + h.memoryStore!.messageCount) }
        }
        return outcome.value
    }

    @Test(
        "Each rule has its error code, and the sender gets message:error with it",
        arguments: [
            (SendMessageRequest(chatID: "no-such-chat", content: "hi"), ChatError.Code.chatNotFound),
            (SendMessageRequest(chatID: "chat-cd", content: "hi"), .notAParticipant),
            (SendMessageRequest(chatID: Harness.directChat, content: ""), .emptyContent),
            (SendMessageRequest(chatID: Harness.directChat, content: " \n\t "), .emptyContent),
            (SendMessageRequest(chatID: Harness.directChat, content: "hi", messageType: "video"), .invalidMessageType),
            (SendMessageRequest(chatID: Harness.directChat, content: "hi", clientMessageID: ""), .badRequest),
        ]
    )
    func rejectedWithCode(request: SendMessageRequest, code: ChatError.Code) async throws {
        let (error, events, traces) = try await self.rejection(request) { h in
            try await h.store.saveChat(Chat(id: "chat-cd", participants: [Harness.carol.id, Harness.dave.id]))
        }
        #expect(error?.code == code)
        #expect(events == [.messageError(MessageErrorPayload(code: code.rawValue, message: error?.message ?? "", chatID: request.chatID, clientMessageID: request.clientMessageID))])
        #expect(traces == 0, "nothing stored, nothing delivered")
    }

    @Test("The content limit counts UTF-8 bytes: exactly the limit is accepted, one byte more is not")
    func contentLimitInBytes() async throws {
        var configuration = ChatServiceConfiguration()
        configuration.maxContentBytes = 12
        try await withHarness(configuration: configuration) { h in
            let alice = await h.connect(Harness.alice)
            // "é" is two bytes: six of them are twelve bytes but six characters.
            let exact = await h.service.send(SendMessageRequest(chatID: Harness.directChat, content: "éééééé"), from: alice)
            #expect((try? exact.get()) != nil)
            let over = await h.service.send(SendMessageRequest(chatID: Harness.directChat, content: "ééééééa"), from: alice)
            guard case .failure(let error) = over else {
                Issue.record("13 bytes were accepted with a 12-byte limit")
                return
            }
            #expect(error.code == .contentTooLarge)
            #expect(error.message.contains("13") && error.message.contains("12"))
        }
    }

    @Test("An unknown connection is unauthorized")
    func unknownConnection() async throws {
        try await withHarness { h in
            h.transport.open("stranger")
            let result = await h.service.send(SendMessageRequest(chatID: Harness.directChat, content: "hi"), from: "stranger")
            #expect(result.errorCode == .unauthorized)
            #expect(h.memoryStore!.messageCount == 0)
        }
    }

    @Test("Store outage: the send fails with store_unavailable and nothing is emitted or queued")
    func storeOutage() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            h.memoryStore!.setAvailable(false)
            let result = await h.service.send(SendMessageRequest(chatID: Harness.groupChat, content: "lost?"), from: alice)
            #expect(result.errorCode == .storeUnavailable)
            #expect(h.contents(of: bob).isEmpty)
            #expect(!h.transport.events(of: alice).contains { if case .messageSent = $0 { true } else { false } })
            #expect(await h.service.health().store == .down)

            h.memoryStore!.setAvailable(true)
            #expect(try await h.depth(of: Harness.carol) == 0)
            try await h.send("back", in: Harness.groupChat, from: alice)
            #expect(h.contents(of: bob) == ["back"])
            #expect(await h.service.health().store == .ok)
        }
    }

    @Test("A repeated send with the same clientMessageId returns the first id and creates nothing new")
    func idempotentSend() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            let first = try await h.send("once", from: alice, clientMessageID: "c-1")
            let again = try await h.send("once", from: alice, clientMessageID: "c-1")
            #expect(again.messageID == first.messageID)
            #expect(again.clientMessageID == "c-1")
            #expect(h.memoryStore!.messageCount == 1)
            #expect(h.contents(of: bob) == ["once"])

            // The same client id from another sender is another message.
            try await h.send("mine", from: bob, clientMessageID: "c-1")
            #expect(h.memoryStore!.messageCount == 2)
        }
    }

    @Test("Settings out of range are refused with the setting's name")
    func configurationValidation() {
        var configuration = ChatServiceConfiguration()
        configuration.drainWindow = 0
        #expect(throws: ChatError.self) { try configuration.validate() }
        do {
            try configuration.validate()
        } catch {
            #expect(error.message.contains("drainWindow"))
        }
    }

    @Test("With encryption at rest, content that looks like a sealed value is refused (it would be taken for one); without, it is ordinary text")
    func sealedPrefixIsReserved() async throws {
        var encrypting = ChatServiceConfiguration()
        encrypting.encryption = .all
        let request = SendMessageRequest(chatID: Harness.directChat, content: "chatd-sealed:v1:k1:AAAA")
        let (error, events, stored) = try await self.rejection(request, configuration: encrypting)
        #expect(error?.code == .badRequest && error?.message.contains("chatd-sealed:v1:") == true)
        #expect(events.count == 1 && stored == 0)
        let (plainError, _, plainStored) = try await self.rejection(request)
        #expect(plainError == nil && plainStored == 2, "delivered to bob and stored")
    }
}

/// `ChatService.send`'s `ordered` callback, which lets a transport start a connection's next send early.
@Suite("Send order with sends in flight")
struct SendOrderTests {
    @Test("ordered comes once the message has its id, not before: a send started then gets a later id even while the first waits for its insert")
    func orderedAfterTheID() async throws {
        try await withHarness { h in
            let store = try #require(h.memoryStore)
            let alice = await h.connect(Harness.alice)
            let bob = await h.connect(Harness.bob)
            let firstOrdered = Locked(0)
            store.hold(.chatLookups)
            let first = Task {
                await h.service.send(SendMessageRequest(chatID: Harness.directChat, content: "first"), from: alice, ordered: {
                    firstOrdered.withLock { $0 += 1 }
                })
            }
            await eventually("the first send waits for its chat") { store.heldCount(.chatLookups) == 1 }
            try await Task.sleep(for: .milliseconds(50))
            #expect(firstOrdered.value == 0, "no id yet: the next send must not start")
            store.hold(.inserts)
            store.release(.chatLookups)
            await eventually("the first send has its id and waits for its insert") { firstOrdered.value == 1 && store.heldCount(.inserts) == 1 }
            let second = Task { await h.service.send(SendMessageRequest(chatID: Harness.directChat, content: "second"), from: alice) }
            await eventually("both inserts in flight at once") { store.heldCount(.inserts) == 2 }
            store.release(.inserts)
            let firstID = try #require(try? await first.value.get()).messageID
            let secondID = try #require(try? await second.value.get()).messageID
            #expect(firstID < secondID)
            #expect(firstOrdered.value == 1, "once")
            await eventually("bob has both") { h.contents(of: bob).count == 2 }
            #expect(h.contents(of: bob) == ["first", "second"])
        }
    }

    @Test("A send refused before it has an id, or whose insert fails, calls ordered exactly once")
    func orderedOnFailures() async throws {
        try await withHarness { h in
            let alice = await h.connect(Harness.alice)
            let calls = Locked(0)
            let unknown = await h.service.send(SendMessageRequest(chatID: "no-such-chat", content: "x"), from: alice, ordered: { calls.withLock { $0 += 1 } })
            #expect((try? unknown.get()) == nil)
            #expect(calls.value == 1)
            let store = try #require(h.memoryStore)
            store.hold(.inserts)
            let failing = Task {
                await h.service.send(SendMessageRequest(chatID: Harness.directChat, content: "x"), from: alice, ordered: { calls.withLock { $0 += 1 } })
            }
            await eventually("the send has its id and waits for its insert") { calls.value == 2 && store.heldCount(.inserts) == 1 }
            store.setAvailable(false)
            store.release(.inserts)
            let result = await failing.value
            guard case .failure(let error) = result else {
                Issue.record("the send succeeded with the store down")
                return
            }
            #expect(error.code == .storeUnavailable)
            #expect(calls.value == 2, "not again when the insert fails")
        }
    }
}
