from channels.generic.websocket import AsyncJsonWebsocketConsumer


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """W5 /ws/chat/<room>/: join the room group, then accept; fan every message out to the room."""

    async def connect(self):
        self.room_group = "chat_" + self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room_group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.room_group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        await self.channel_layer.group_send(
            self.room_group, {"type": "chat.message", "message": content.get("message", "")}
        )

    async def chat_message(self, event):
        await self.send_json({"message": event["message"]})
